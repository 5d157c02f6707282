"""Replay on the real broker: N events in, N on the topics, timestamps and per-key order kept."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streamer.app.replay import replay_events
from streamer.events import ClickEvent, Event, EventCodec, OrderLine, PurchaseEvent
from streamer.settings import Settings
from tests.conftest import consume, settings_env

pytestmark = pytest.mark.integration

T0 = 1_300_000_000_000


def history(n: int, seed: int = 3) -> list[Event]:
    rng = random.Random(seed)
    events: list[Event] = []
    for i in range(n):
        session = f"s{rng.randrange(12)}"
        ts = T0 + i * 1000 + rng.randrange(500)
        if rng.random() < 0.2:
            events.append(PurchaseEvent(
                event_id=f"p{i}", ts=ts, user_id="u", session_id=session, order_id=f"o{i}",
                items=[OrderLine(item_id=f"i{rng.randrange(9)}", quantity=1, unit_price=1.5)]))
        else:
            events.append(ClickEvent(event_id=f"c{i}", ts=ts, user_id="u", session_id=session,
                                     item_id=f"i{rng.randrange(9)}", kind="view"))
    return sorted(events, key=lambda e: e.ts)


def read_back(settings: Settings, events: list[Event]) -> list[Any]:
    """Every record on both topics, once as many as were sent have arrived."""
    t = settings.topics
    purchases = sum(isinstance(e, PurchaseEvent) for e in events)
    clicks = len(events) - purchases
    records = consume(settings, t.clicks, lambda rs: len(rs) >= clicks, timeout_s=30)
    records += consume(settings, t.purchases, lambda rs: len(rs) >= purchases, timeout_s=30)
    assert len(records) == len(events)
    return records


def test_replay_keeps_count_timestamps_and_per_key_order(settings: Settings) -> None:
    from tests.conftest import ensure_topics

    asyncio.run(ensure_topics(settings))
    events = history(400)
    summary = asyncio.run(replay_events(settings, events, speed=None))
    assert summary.events == 400 and summary.errors == 0
    records = read_back(settings, events)
    codec = EventCodec()
    by_id = {e.event_id: e for e in events}
    per_key: dict[tuple[str, bytes], list[int]] = {}
    for r in records:
        decoded = (codec.decode_purchase if r.topic == settings.topics.purchases
                   else codec.decode_click)(r.value)
        original = by_id[decoded.event_id]
        assert decoded == original
        assert r.timestamp == original.ts  # original event time as the Kafka timestamp
        assert r.key == original.session_id.encode()
        per_key.setdefault((r.topic, r.key), []).append((r.partition, r.offset, original.ts))
    for entries in per_key.values():
        assert len({p for p, _, _ in entries}) == 1  # a session stays on one partition
        by_offset = sorted(entries)
        assert [ts for _, _, ts in by_offset] == sorted(ts for _, _, ts in entries)


def test_replay_command_resumes_and_summarises(settings: Settings, tmp_path: Path) -> None:
    from tests.conftest import ensure_topics

    asyncio.run(ensure_topics(settings))
    events = history(100)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(msgspec.json.encode(e) for e in events) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "streamer", "replay", str(path), "--format", "jsonl",
         "--skip", "40", "--speed", "max"],
        env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "60 events" in result.stdout
    assert "errors: 0" in result.stdout
    records = read_back(settings, events[40:])
    sent_ids = {msgspec.json.decode(r.value)["event_id"] for r in records}
    assert sent_ids == {e.event_id for e in events[40:]}


def test_a_replay_before_any_worker_creates_its_topics_as_the_worker_would(
        settings: Settings) -> None:
    """Not left to the broker's auto-create (its default partition count, which the worker
    then refuses), and kept whatever the events' age (Kafka deletes by record time)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streamer.app.topics import TopicNeeds, describe

    events = history(50)
    summary = asyncio.run(replay_events(settings, events, speed=None))
    assert summary.events == 50 and summary.errors == 0
    t = settings.topics
    # Each topic created so is said to be kept forever, with the command to change that.
    assert [w.split(" ")[:2] for w in summary.warnings] == [["created", t.clicks],
                                                            ["created", t.purchases]]
    assert all("retention.ms=-1" in w and "--add-config retention.ms=604800000" in w
               for w in summary.warnings)

    async def described() -> dict[str, Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        await admin.start()
        try:
            needs = [TopicNeeds(n, configs={"retention.ms": "-1"})
                     for n in (t.clicks, t.purchases)]
            return await describe(admin, needs, {t.clicks, t.purchases})
        finally:
            await admin.close()

    for topic in asyncio.run(described()).values():
        assert topic.partitions == t.partitions  # 4, not the broker's default
        assert topic.configs is not None and topic.configs.get("retention.ms") == "-1"
    read_back(settings, events)


def test_a_replay_into_topics_the_worker_would_refuse_sends_nothing(settings: Settings) -> None:
    from streamer.app.topics import TopicSetupError
    from tests.integration.test_topics import create

    create(settings, settings.topics.clicks, 8)
    with pytest.raises(TopicSetupError, match="has 8 partitions, streamer needs 4"):
        asyncio.run(replay_events(settings, history(20), speed=None))  # before any send


def test_a_replay_into_a_topic_that_would_delete_its_history_says_what_to_set(
        settings: Settings) -> None:
    from tests.integration.test_topics import create

    create(settings, settings.topics.clicks, 4, {"retention.ms": "604800000"})
    summary = asyncio.run(replay_events(settings, history(20), speed=None))
    created, warning = summary.warnings  # purchases was created: kept forever
    assert created.startswith(f"created {settings.topics.purchases} ")
    assert warning.startswith(f"{settings.topics.clicks} keeps records 7 days (retention.ms)")
    assert f"--entity-name {settings.topics.clicks} --add-config retention.ms=-1" in warning
    assert summary.text().startswith(f"{created}\n{warning}")
