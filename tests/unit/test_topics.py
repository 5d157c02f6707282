"""What to do about existing topics (streamer.app.topics): the decision, table-driven, and how
the outcome of setting configs becomes a log line, a warning or a refusal to start. Against the
real broker: tests/integration/test_topics.py."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import IncompatibleBrokerVersion, TopicAuthorizationFailedError

from streamer.app.topics import (
    DescribedTopic,
    TopicPlan,
    TopicSetupError,
    plan,
    reconcile,
)
from streamer.app.worker import KEEP_FOREVER, topic_needs
from streamer.settings import Settings

SETTINGS = Settings()
NEEDS = topic_needs(SETTINGS)
WEEK = {"cleanup.policy": "delete", "retention.ms": "604800000", "retention.bytes": "-1"}


def topics(**partitions: int) -> dict[str, DescribedTopic]:
    return {name: DescribedTopic(name, n, {}) for name, n in partitions.items()}


def test_streamer_needs_co_partitioned_clicks_and_purchases_and_a_policy_topic_kept_forever(
) -> None:
    needs = {n.name: n for n in NEEDS}
    assert {name for name, n in needs.items() if n.partitions is not None} == {
        "clicks", "purchases"}
    assert all(n.partitions == SETTINGS.topics.partitions
               for n in needs.values() if n.partitions is not None)
    assert {name: dict(n.configs) for name, n in needs.items() if n.configs} == {
        "policy-updates": KEEP_FOREVER}
    assert all(n.why for n in needs.values() if n.configs or n.partitions)


@pytest.mark.parametrize(("described", "alter"), [
    # Created by streamer: nothing to do.
    ({"policy-updates": DescribedTopic("policy-updates", 1, KEEP_FOREVER)}, {}),
    # The broker's 7 days: only what differs is set.
    ({"policy-updates": DescribedTopic("policy-updates", 1, WEEK)},
     {"policy-updates": {"retention.ms": "-1"}}),
    # Compacted: every record has the key "policy", compaction would keep only the last.
    ({"policy-updates": DescribedTopic("policy-updates", 3,
                                       {**KEEP_FOREVER, "cleanup.policy": "compact,delete"})},
     {"policy-updates": {"cleanup.policy": "delete"}}),
    # Tansu describes only the configs a topic was given: missing means not set.
    ({"policy-updates": DescribedTopic("policy-updates", 1, {})},
     {"policy-updates": KEEP_FOREVER}),
    # Not existing yet (created as needed), or a topic with no needs: nothing.
    ({}, {}),
    ({"offers": DescribedTopic("offers", 12, {}), "rewards": DescribedTopic("rewards", 1, {})},
     {}),
])
def test_configs_that_keep_less_than_needed_are_set(
        described: dict[str, DescribedTopic], alter: dict[str, dict[str, str]]) -> None:
    result = plan(NEEDS, described, bootstrap="k:9092")
    assert result == TopicPlan(alter=alter)


def test_partitions_that_could_not_be_described_are_a_warning() -> None:
    described = {"clicks": DescribedTopic("clicks", None, None,
                                          "Metadata: LeaderNotAvailableError")}
    assert plan(NEEDS, described, bootstrap="k:9092") == TopicPlan(unchecked=[
        "clicks: could not describe its partitions (Metadata: LeaderNotAvailableError); it needs "
        "4 (partition p of clicks and purchases is joined on one worker with faust's internal "
        "topics)"])


def test_configs_that_could_not_be_described_are_a_warning_with_the_command() -> None:
    described = {"policy-updates": DescribedTopic(
        "policy-updates", 1, None, "DescribeConfigs: TopicAuthorizationFailedError: denied")}
    result = plan(NEEDS, described, bootstrap="k:9092")
    assert result.alter == {} and result.refusals == []
    (line,) = result.unchecked
    assert line.startswith("policy-updates: could not describe its configuration "
                           "(DescribeConfigs: TopicAuthorizationFailedError: denied)")
    assert ("kafka-configs.sh --bootstrap-server k:9092 --alter --entity-type topics "
            "--entity-name policy-updates --add-config "
            "cleanup.policy=delete,retention.ms=-1,retention.bytes=-1") in line


@pytest.mark.parametrize(("partitions", "refused", "said"), [
    # Both topics have another count than the setting: the setting can follow them.
    ({"clicks": 8, "purchases": 8}, ["clicks", "purchases"],
     ["recreate clicks with 4 partitions", "set STREAMER__TOPICS__PARTITIONS=8"]),
    # Fewer partitions: they can be added; purchases (not existing) will be created with 4.
    ({"clicks": 2}, ["clicks"],
     ["--alter --topic clicks --partitions 4", "set STREAMER__TOPICS__PARTITIONS=2"]),
    # They disagree with each other: no one setting fits both.
    ({"clicks": 2, "purchases": 4}, ["clicks"], ["--alter --topic clicks --partitions 4"]),
    ({"clicks": 4, "purchases": 4, "offers": 1, "policy-updates": 3}, [], []),
])
def test_clicks_or_purchases_with_another_partition_count_refuse_the_start(
        partitions: dict[str, int], refused: list[str], said: list[str]) -> None:
    result = plan(NEEDS, topics(**partitions), bootstrap="k:9092")
    assert [r.split(" ")[0] for r in result.refusals] == refused
    text = "\n".join(result.refusals)
    for name in refused:
        assert f"{name} has {partitions[name]} partitions, streamer needs 4" in text
    for phrase in said:
        assert phrase in text, phrase
    if len(set(partitions.values()) & {2, 4}) == 2:  # counts disagree: no setting suggested
        assert "set STREAMER__TOPICS__PARTITIONS" not in text


class Admin:
    """Answers describe requests with ``described``, and IncrementalAlterConfigs with
    ``alter_answer`` (per topic error codes) or by raising ``alter_raises``."""

    def __init__(self, described: dict[str, DescribedTopic],
                 alter_answer: dict[str, int] | None = None,
                 alter_raises: Exception | None = None) -> None:
        self.described = described
        self.alter_answer = alter_answer or {}
        self.alter_raises = alter_raises
        self.altered: list[Any] = []

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"topic": n, "error_code": 0,
                 "partitions": [{}] * (self.described[n].partitions or 0)} for n in names]

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        return [SimpleNamespace(resources=[
            (0, None, 2, r.name, [(k, v, False, 1, False, [])
                                  for k, v in (self.described[r.name].configs or {}).items()])
            for r in resources])]

    async def _send_request(self, request: Any) -> Any:
        if self.alter_raises is not None:
            raise self.alter_raises
        self.altered.extend(request.resources)
        return SimpleNamespace(responses=[
            (self.alter_answer.get(name, 0), "told so", 2, name)
            for _, name, _ in request.resources])


def run(admin: Admin) -> TopicPlan:
    return asyncio.run(reconcile(admin, NEEDS, set(admin.described), bootstrap="k:9092"))  # type: ignore[arg-type]


def test_what_was_set_is_logged_with_what_the_topic_had(caplog: pytest.LogCaptureFixture) -> None:
    admin = Admin({"policy-updates": DescribedTopic("policy-updates", 1, WEEK)})
    with caplog.at_level(logging.WARNING, logger="streamer.app.topics"):
        run(admin)
    assert admin.altered == [(2, "policy-updates", [("retention.ms", 0, "-1")])]
    assert ("topic policy-updates: set retention.ms=-1 (it had retention.ms=604800000): kept "
            "forever") in caplog.text


def test_a_config_the_broker_refuses_to_set_refuses_the_start() -> None:
    code = TopicAuthorizationFailedError.errno
    admin = Admin({"policy-updates": DescribedTopic("policy-updates", 1, {})},
                  alter_answer={"policy-updates": code})
    with pytest.raises(TopicSetupError) as e:
        run(admin)
    message = str(e.value)
    assert "policy-updates needs cleanup.policy=delete, retention.ms=-1, retention.bytes=-1" in (
        message)
    assert "setting it failed (TopicAuthorizationFailedError: told so)" in message
    assert "kafka-configs.sh --bootstrap-server k:9092 --alter" in message


def test_a_broker_without_incremental_alter_configs_gets_a_warning_not_a_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    admin = Admin({"policy-updates": DescribedTopic("policy-updates", 1, WEEK)},
                  alter_raises=IncompatibleBrokerVersion("not advertised"))
    with caplog.at_level(logging.WARNING, logger="streamer.app.topics"):
        result = run(admin)
    assert result.alter == {}
    assert ("topic policy-updates: needs retention.ms=-1 (kept forever: workers rebuild the "
            "live policy version and rollbacks by replaying it from its start) and this broker "
            "does not support setting it (IncrementalAlterConfigs: IncompatibleBrokerVersion)"
            ) in caplog.text
    assert "--add-config retention.ms=-1`" in caplog.text
    assert " set retention.ms" not in caplog.text  # nothing claims it was set


def test_a_wrong_partition_count_refuses_before_anything_is_set() -> None:
    admin = Admin({"clicks": DescribedTopic("clicks", 2, {}),
                   "policy-updates": DescribedTopic("policy-updates", 1, WEEK)})
    with pytest.raises(TopicSetupError, match="clicks has 2 partitions, streamer needs 4"):
        run(admin)
    assert admin.altered == []


def test_a_topic_the_broker_refuses_to_create_refuses_the_start() -> None:
    """aiokafka returns the broker's answer per topic and raises nothing: a refusal read from
    it, and a topic another worker created meanwhile is not one."""
    from aiokafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

    from streamer.app.broker import create_missing

    class Creating:
        async def create_topics(self, new: list[Any]) -> Any:
            return SimpleNamespace(topic_errors=[
                ("clicks", TopicAlreadyExistsError.errno, "exists"),
                ("offers", InvalidReplicationFactorError.errno, "3 > 1 broker"),
                ("rewards", 0, None)])

    with pytest.raises(TopicSetupError) as e:
        asyncio.run(create_missing(Creating(), ["clicks", "offers", "rewards"],  # type: ignore[arg-type]
                                   set(), partitions=4, replication_factor=3))
    assert str(e.value) == "could not create offers: InvalidReplicationFactorError: 3 > 1 broker"
