"""FastConsumer on the real broker: a faust worker (a child process, as in production) with the
fast consumer installed gets every event exactly once and commits every offset.

Its agent holds back its first event until the consumer has found the stream queue (16 events)
full and had to wait to deliver one (``on_suspended``), so deliveries take both ways: inline
while the stream queue has room, and the stock task race once it is full.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamer.app.broker import EmbeddedBroker, create_topics, stop_process_group
from tests.conftest import consume, produce, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
EVENTS = 3000


# -- the worker (this file run as a script) -----------------------------------------------------
def run_worker(bootstrap: str, topic: str, app_id: str, out: Path, status: Path,
               work_ms: float) -> None:
    """A faust worker with the fast consumer: appends each event's value to ``out`` (after
    ``work_ms`` of simulated work) and writes its consumer's class and suspended deliveries to
    ``status`` every 0.2 s."""
    import faust
    import uvloop

    from streamer.app.fast_consumer import install_fast_consumer

    uvloop.install()
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="fast-consumer-test-"),
        topic_partitions=PARTITIONS,
        broker_session_timeout=6.0,
        broker_rebalance_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=0.5,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=16,
        web_enabled=False,
    )
    suspended = asyncio.Event()  # the consumer had to wait to deliver a message
    install_fast_consumer(app, on_suspended=suspended.set)
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    sink = open(out, "a", buffering=1)  # noqa: SIM115 - open for the worker's lifetime

    @app.agent(source)
    async def record(stream: Any) -> None:
        async for value in stream:
            if work_ms:
                await asyncio.sleep(work_ms / 1000)  # simulated work, not synchronisation
            elif not suspended.is_set():
                # The queue fills behind this first event; the test fails on a report of no
                # suspended delivery if that never happens.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(suspended.wait(), 30)
            sink.write(value.decode() + "\n")

    @app.timer(0.2)
    async def report() -> None:
        consumer = app.consumer
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps({"consumer": type(consumer).__name__,
                                   "suspended": getattr(consumer, "suspended_deliveries", 0)}))
        tmp.replace(status)

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


# -- the test -----------------------------------------------------------------------------------
async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` committed on ``topic``, by partition."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()
            if meta is not None and meta.offset >= 0}


class FastWorker:
    """This file run as a faust worker (its own process group, always stopped)."""

    def __init__(self, bootstrap: str, topic: str, group: str, workdir: Path, name: str,
                 work_ms: float = 0.0) -> None:
        self.out, self.status = workdir / f"{name}-seen.txt", workdir / f"{name}-status.json"
        self.log = workdir / f"{name}.log"
        self.out.touch()
        env = dict(os.environ,
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--bootstrap", bootstrap, "--topic", topic,
                 "--app-id", group, "--out", str(self.out), "--status", str(self.status),
                 "--work-ms", str(work_ms)],
                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def seen(self) -> list[str]:
        """Event ids the agent got so far; fails the test at once if the worker died."""
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return self.out.read_text().splitlines()

    def report(self) -> dict[str, Any]:
        return dict(wait_for(lambda: self.status.exists() and json.loads(self.status.read_text()),
                             10, "the worker's status"))

    def stop(self) -> None:
        stop_process_group(self.proc)


def log_ends(settings: Any, topic: str, n: int) -> dict[int, int]:
    """Offset after the last record, by partition, from the records themselves: Tansu's
    ListOffsets (latest) answers the base offset of the last batch instead."""
    records = consume(settings, topic, lambda rs: len(rs) >= n)
    assert len(records) == n
    return {p: 1 + max(r.offset for r in records if r.partition == p)
            for p in {r.partition for r in records}}


def wait_all_committed(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> None:
    last: dict[int, int] = {}

    def all_committed() -> bool:
        last.update(asyncio.run(_committed(bootstrap, group, topic)))
        return last == ends

    wait_for(all_committed, 30, f"committed offsets {last} to reach the log ends {ends}")


def new_topic(broker: EmbeddedBroker) -> tuple[str, str]:
    topic = f"fast-consumer-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(broker.bootstrap, [topic], partitions=PARTITIONS))
    return topic, f"fast-consumer-test-{uuid.uuid4().hex[:8]}"


def events(first: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i % 97}".encode(), f"e{i}".encode()) for i in range(first, first + n)]


def test_every_event_once_and_every_offset_committed(broker: EmbeddedBroker,
                                                     settings: Any, tmp_path: Path) -> None:
    topic, group = new_topic(broker)
    produce(settings, topic, events(0, EVENTS))
    worker = FastWorker(broker.bootstrap, topic, group, tmp_path, "worker")
    try:
        wait_for(lambda: len(worker.seen()) >= EVENTS, 90, f"the worker to see {EVENTS} events")
        wait_all_committed(broker.bootstrap, group, topic, log_ends(settings, topic, EVENTS))
        counts = collections.Counter(worker.seen())
        assert set(counts) == {f"e{i}" for i in range(EVENTS)}
        assert [e for e, n in counts.items() if n != 1] == []
        report = worker.report()
        assert report["consumer"] == "FastConsumer"
        assert report["suspended"] > 0  # the stock path (full queue) ran too
    finally:
        worker.stop()


def test_a_rebalance_mid_stream_loses_nothing_and_completes(broker: EmbeddedBroker,
                                                            settings: Any,
                                                            tmp_path: Path) -> None:
    """A second worker joins while the first is busy with a full stream queue, so the first's
    deliveries are blocked when the rebalance suspends its flow: at least once, nothing lost,
    every offset committed by the two of them, both workers alive."""
    topic, group = new_topic(broker)
    produce(settings, topic, events(0, EVENTS))
    # ~2 ms of work per event: the first worker is still busy when the second has joined
    a = FastWorker(broker.bootstrap, topic, group, tmp_path, "a", work_ms=2.0)
    b = None
    try:
        wait_for(lambda: len(a.seen()) >= 200, 60, "the first worker to be under way")
        b = FastWorker(broker.bootstrap, topic, group, tmp_path, "b", work_ms=2.0)
        wait_for(lambda: b.seen(), 60, "the second worker to get partitions and events")
        produce(settings, topic, events(EVENTS, EVENTS))
        everything = {f"e{i}" for i in range(2 * EVENTS)}
        wait_for(lambda: set(a.seen()) | set(b.seen()) >= everything, 120,
                 "every event to be seen by one of the workers")
        wait_all_committed(broker.bootstrap, group, topic, log_ends(settings, topic, 2 * EVENTS))
        assert set(a.seen()) | set(b.seen()) == everything
        assert a.report()["consumer"] == b.report()["consumer"] == "FastConsumer"
        a.seen(), b.seen()  # both still running
    finally:
        a.stop()
        if b is not None:
            b.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name in ("--bootstrap", "--topic", "--app-id", "--out", "--status"):
        p.add_argument(name, required=True)
    p.add_argument("--work-ms", type=float, default=0.0)
    a = p.parse_args()
    run_worker(a.bootstrap, a.topic, a.app_id, Path(a.out), Path(a.status), a.work_ms)
