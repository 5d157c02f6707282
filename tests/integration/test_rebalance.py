"""A worker inside a batch longer than the group's timeouts while the group rebalances.

Worker A's interpreter imports a ``sitecustomize`` (the test's, as in ``test_agent_crash``)
that makes ``Engine.learn_baskets`` hold the event loop, as CPU-bound work on a huge batch
would, from the first call after the test creates a file until the test writes to a FIFO.

Against the embedded broker a stalled batch alone loses A nothing: A's consumer thread keeps
heartbeating, and Tansu holds the rebalance B's join starts until A rejoins (B's joins time out
and retry; B was not ready after 90 s), where Apache Kafka drops A after
``kafka.rebalance_timeout_s``. So the test also stops A's process (SIGSTOP) while it stalls:
its session times out, the group drops A and B takes every partition over, recovers their
tables and finishes the chunk. Then A goes on (SIGCONT), its batch ends, and it learns it was
dropped. It must write nothing more: its pending changes would land in the changelogs after
B's and replace them on the next recovery (1,040 co-counts lost so, before the fix). It stops
with status 1 (``FastConsumer._still_member``) and is restarted, as a supervisor would.

The co-purchase state and the reward ledger must end as in a run without any of it
(``tests/crash_harness.py``: the engine in process). About 50 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from streamer.app.broker import EmbeddedBroker
from streamer.app.worker import ensure_topics
from tests.conftest import wait_for
from tests.crash_harness import (
    RunEvents,
    Worker,
    close_and_compare_ledger,
    compare,
    consumed_purchases,
    fresh_settings,
    group_state,
    produce_offers,
    produce_orders,
    reference_state,
    wait_settled,
    worker_settings,
)

pytestmark = pytest.mark.integration

SLOW_BATCH = '''
import os
import select

import streamer.engine

_learn_baskets = streamer.engine.Engine.learn_baskets


def learn_baskets(self, baskets):
    if os.path.exists({stall!r}) and not os.path.exists({stalled!r}):
        # The slow batch: the event loop is held, as by CPU-bound work, until the test writes
        # to the release FIFO (or 120 s pass). Opened before "stalled" is created, so the
        # test's write always finds this reader.
        release = os.open({release!r}, os.O_RDONLY | os.O_NONBLOCK)
        open({stalled!r}, "w").close()
        select.select([release], [], [], 120)
        os.close(release)
    return _learn_baskets(self, baskets)


streamer.engine.Engine.learn_baskets = learn_baskets
'''


def release_stall(fifo: Path) -> None:
    """End A's held batch: write to the FIFO its hook waits on (nothing, when no one waits)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader, A never stalled (or already went on)
        return
    try:
        os.write(fd, b"go")
    finally:
        os.close(fd)


def split(a: Worker, b: Worker, partitions: int) -> bool:
    """Whether ``a`` and ``b`` both own partitions, each partition exactly one of them."""
    owned_a, owned_b = a.state().get("partitions"), b.state().get("partitions")
    return bool(owned_a and owned_b) and sorted(owned_a + owned_b) == list(range(partitions))


def dropped(worker: Worker) -> bool:
    """Whether ``worker`` logged that the group dropped it (it then stops)."""
    return "the consumer group dropped this worker" in worker.log_tail(10_000_000)


ORDERS = 120  # per chunk; the first chunk in two halves, A stalls at the start of the second


def test_a_worker_stalled_in_a_batch_through_a_rebalance_loses_and_doubles_nothing(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = fresh_settings(broker.bootstrap, tmp_path, partitions=4)
    asyncio.run(ensure_topics(settings))
    stall, stalled, release = (tmp_path / name for name in ("stall", "stalled", "release"))
    os.mkfifo(release)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        SLOW_BATCH.format(stall=str(stall), stalled=str(stalled), release=str(release)))
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    run = RunEvents.make(2 * ORDERS, seed=21)
    produce_offers(settings, run.offers)
    timeout_s = 90.0
    a = Worker(worker_settings(settings, 0, tmp_path), tmp_path / "worker-a.log",
               env={"PYTHONPATH": path})
    b: Worker | None = None
    try:
        a.wait_ready(timeout_s)
        first, first_clicks = run.chunk(0, ORDERS)
        half = ORDERS // 2
        produce_orders(settings, first[:half], first_clicks[:half])
        wait_for(lambda: consumed_purchases([a]) >= half, timeout_s, "A to consume a half")
        stall.touch()
        produce_orders(settings, first[half:], first_clicks[half:])
        wait_for(stalled.exists, timeout_s, "A to stall in a batch")
        os.killpg(a.process.proc.pid, signal.SIGSTOP)  # and its heartbeats: the group drops A
        b = Worker(worker_settings(settings, 1, tmp_path), tmp_path / "worker-b.log")
        b.wait_ready(timeout_s)
        # B takes everything over and finishes the chunk alone.
        wait_for(lambda: b is not None and len(b.state().get("partitions", [])) == 4,
                 timeout_s, "B to own every partition while A is stalled")
        wait_settled(settings, [b], timeout_s)
        os.killpg(a.process.proc.pid, signal.SIGCONT)
        release_stall(release)  # A's batch ends: A finds itself dropped, writes nothing, stops
        # Stopping, A may still rejoin and get partitions for a moment: its log tells first.
        wait_for(lambda: dropped(a) or split(a, b, settings.topics.partitions), timeout_s,
                 "A to find itself dropped, or to rejoin")
        stopped = dropped(a)
        if stopped:
            wait_for(lambda: not a.alive, timeout_s, "A to stop")
            assert a.process.proc.returncode == 1, a.log_tail()
            a = Worker(a.settings, tmp_path / "worker-a-restarted.log")  # as a supervisor would
            a.wait_ready(timeout_s)
            wait_for(lambda: split(a, b, settings.topics.partitions), timeout_s,
                     "A back in the group, the partitions split between A and B")
        produce_orders(settings, *run.chunk(1, ORDERS))
        wait_settled(settings, [a, b], timeout_s)
        diff = compare(reference_state(settings, run.orders, run.all_clicks()),
                       group_state([a, b], settings.topics.partitions))
        assert diff.equal, f"co-purchase state off after the stalled batch: {diff}"
        (a, b), ledger, _ = close_and_compare_ledger(settings, [a, b], run, tmp_path,
                                                     victim_index=None, seed=21,
                                                     timeout_s=timeout_s)
        assert ledger.equal, ledger.line()
        assert stopped, "A went on after the group dropped it"
    finally:
        release_stall(release)
        a.stop()
        if b is not None:
            b.stop()
