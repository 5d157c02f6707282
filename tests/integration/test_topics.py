"""Existing topics created otherwise (an earlier release, auto-create, an operator), against the
real embedded broker: policy-updates is set to keep its records forever, clicks or purchases
with another partition count refuse the start, and a broker that cannot describe or set
configs gets a warning, not a crash. The decisions themselves: tests/unit/test_topics.py."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.admin import DescribeConfigsRequest

from streamer.app import topics
from streamer.app.worker import KEEP_FOREVER, ensure_topics, topic_names
from streamer.settings import Settings
from tests.conftest import settings_env

pytestmark = pytest.mark.integration

WEEK = {"retention.ms": "604800000", "cleanup.policy": "compact"}


async def _admin_call(settings: Settings, call: Any) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        return await call(admin)
    finally:
        await admin.close()


def create(settings: Settings, name: str, partitions: int,
           configs: dict[str, str] | None = None) -> None:
    """Create ``name`` as someone else would have: its own partitions and configs."""
    asyncio.run(_admin_call(settings, lambda a: a.create_topics(
        [NewTopic(name, partitions, 1, topic_configs=configs or {})])))


def configs_of(settings: Settings, name: str) -> dict[str, str]:
    (response,) = asyncio.run(_admin_call(settings, lambda a: a.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name)])))
    ((code, _, _, _, entries),) = response.resources
    assert code == 0
    return {e[0]: e[1] for e in entries}


def existing(settings: Settings) -> set[str]:
    return set(asyncio.run(_admin_call(settings, lambda a: a.list_topics())))


def test_a_policy_topic_with_the_brokers_retention_is_set_to_keep_forever(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    name = settings.topics.policy_updates
    create(settings, name, 1, WEEK)
    with caplog.at_level(logging.WARNING, logger="streamer.app.topics"):
        asyncio.run(ensure_topics(settings))
    assert {k: configs_of(settings, name).get(k) for k in KEEP_FOREVER} == KEEP_FOREVER
    assert (f"topic {name}: set cleanup.policy=delete, retention.ms=-1, retention.bytes=-1 (it "
            f"had cleanup.policy=compact, retention.ms=604800000, retention.bytes=(not set))"
            ) in caplog.text
    assert set(topic_names(settings)) <= existing(settings)  # the missing ones were created
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamer.app.topics"):
        asyncio.run(ensure_topics(settings))  # once set, nothing more to say
    assert caplog.text == ""


def test_clicks_with_another_partition_count_refuse_the_start_before_anything_is_created(
        settings: Settings) -> None:
    create(settings, settings.topics.clicks, 2)
    create(settings, settings.topics.policy_updates, 1, WEEK)
    with pytest.raises(topics.TopicSetupError) as e:
        asyncio.run(ensure_topics(settings))
    message = str(e.value)
    assert f"- {settings.topics.clicks} has 2 partitions, streamer needs 4" in message
    assert (f"kafka-topics.sh --bootstrap-server {settings.kafka.bootstrap_servers} --alter "
            f"--topic {settings.topics.clicks} --partitions 4") in message
    assert "set STREAMER__TOPICS__PARTITIONS=2" in message
    assert settings.topics.purchases not in existing(settings)  # nothing created...
    assert configs_of(settings, settings.topics.policy_updates) == WEEK  # ...nor set


def test_the_worker_command_exits_with_the_refusal_not_a_traceback(settings: Settings) -> None:
    create(settings, settings.topics.purchases, 8)
    result = subprocess.run([sys.executable, "-m", "streamer", "worker"],
                            env=settings_env(settings) | {"COLUMNS": "400"},
                            capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"{settings.topics.purchases} has 8 partitions, streamer needs 4" in out
    assert "Traceback" not in out, out


def test_a_broker_that_cannot_set_configs_gets_a_warning_with_the_command(
        settings: Settings, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker without IncrementalAlterConfigs (Kafka before 2.3), as aiokafka's version
    negotiation sees one: the request under an API key this broker does not advertise
    (AlterConfigs, 33)."""
    name = settings.topics.policy_updates
    create(settings, name, 1, WEEK)
    monkeypatch.setattr(topics.IncrementalAlterConfigsRequest, "API_KEY", 33)
    with caplog.at_level(logging.WARNING, logger="streamer.app.topics"):
        asyncio.run(ensure_topics(settings))
    assert (f"topic {name}: needs cleanup.policy=delete, retention.ms=-1, retention.bytes=-1 "
            f"(kept forever") in caplog.text
    assert "does not support setting it (IncrementalAlterConfigs: IncompatibleBrokerVersion)" in (
        caplog.text)
    assert f"--entity-name {name} --add-config cleanup.policy=delete," in caplog.text
    assert configs_of(settings, name) == WEEK
    assert set(topic_names(settings)) <= existing(settings)  # the worker goes on


def test_a_broker_that_cannot_describe_configs_gets_a_warning(
        settings: Settings, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = settings.topics.policy_updates
    create(settings, name, 1, WEEK)
    monkeypatch.setattr(DescribeConfigsRequest, "API_KEY", 33)  # as above, for DescribeConfigs
    with caplog.at_level(logging.WARNING, logger="streamer.app.topics"):
        asyncio.run(ensure_topics(settings))
    assert (f"topic {name}: could not describe its configuration (DescribeConfigs: "
            f"IncompatibleBrokerVersion") in caplog.text
    monkeypatch.undo()
    assert configs_of(settings, name) == WEEK  # not set blindly


def test_workers_starting_together_both_create_and_check_the_topics(settings: Settings) -> None:
    """The second creation of a topic answers "already exists": not a refusal."""
    async def both() -> None:
        await asyncio.gather(ensure_topics(settings), ensure_topics(settings))

    asyncio.run(both())
    assert set(topic_names(settings)) <= existing(settings)
