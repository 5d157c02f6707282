"""streamer.app.fast_consumer: the install checks, the copied drain loop, and delivery semantics
equal to stock faust's ``wait_first(callback(message), suspend_flow.wait())`` in every case."""

from __future__ import annotations

import asyncio
import difflib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode import Service

from streamer.app import fast_consumer
from streamer.app.fast_consumer import (
    DroppedByGroup,
    FastConsumer,
    FastConsumerUnsupported,
    _Continuation,
    check_supported,
    install_fast_consumer,
)
from streamer.app.fetched_records import SkippedBatch
from tests.conftest import quiescent, until


def new_app(**conf: Any) -> faust.App:
    return faust.App("fast-consumer-unit", broker="kafka://127.0.0.1:9", store="memory://",
                     **conf)


# -- install -----------------------------------------------------------------------------------
def test_install_sets_the_consumer_class_of_this_apps_transport_only() -> None:
    app, other = new_app(), new_app()
    install_fast_consumer(app)
    assert app.transport.Consumer is FastConsumer
    assert other.transport.Consumer is faust_aiokafka.Consumer
    assert faust_aiokafka.Transport.Consumer is faust_aiokafka.Consumer
    install_fast_consumer(app)  # idempotent
    assert app.transport.Consumer is FastConsumer


def test_install_refuses_once_the_consumer_exists() -> None:
    app = new_app()
    app.consumer = object()  # type: ignore[assignment]  # what app.consumer caches
    with pytest.raises(FastConsumerUnsupported, match="already created its consumer"):
        install_fast_consumer(app)


def test_install_refuses_another_consumer_class() -> None:
    app = new_app()
    app.transport.Consumer = type("Custom", (faust_aiokafka.Consumer,), {})
    with pytest.raises(FastConsumerUnsupported, match="not faust's aiokafka"):
        install_fast_consumer(app)


def test_installed_faust_is_the_one_the_loop_was_copied_from() -> None:
    check_supported()
    assert faust.__version__ == fast_consumer.FAUST_VERSION


@pytest.mark.parametrize("name", ["_drain_messages", "_commit_tps"])
def test_install_fails_loudly_when_a_copied_faust_method_changed(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    async def changed(self: Any, *args: Any) -> None:
        """A faust release whose method differs."""

    monkeypatch.setattr(faust_consumer.Consumer, name, changed)
    with pytest.raises(FastConsumerUnsupported,
                       match=rf"written against faust-streaming 0\.15\.3.*{name} changed"):
        install_fast_consumer(new_app())


def test_install_fails_loudly_when_a_hook_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(faust_consumer.Consumer, "_add_gap")
    with pytest.raises(FastConsumerUnsupported, match=r"no _add_gap\(\)"):
        install_fast_consumer(new_app())


def test_install_fails_loudly_when_fausts_producer_buffer_changed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def changed(self: Any) -> None:
        """A faust release whose buffer waits otherwise."""

    monkeypatch.setattr(ProducerBuffer, "wait_until_ebb", changed)
    with pytest.raises(FastConsumerUnsupported, match=r"ProducerBuffer.wait_until_ebb changed"):
        install_fast_consumer(new_app())


def test_the_consumer_gives_the_producer_buffer_a_wait_that_reads_the_setting_once() -> None:
    app = new_app()
    install_fast_consumer(app)
    buffer = app.producer.buffer
    flushed: list[int | None] = []

    async def flush_atmost(n: int | None) -> int:  # what faust's wait does above the limit
        flushed.append(n)
        return 0

    buffer.flush_atmost = flush_atmost  # type: ignore[method-assign]
    stock = buffer.wait_until_ebb
    app.consumer  # noqa: B018  # creating the consumer patches the app's buffer
    assert buffer.wait_until_ebb is not stock

    async def fill_and_wait() -> None:
        await buffer.wait_until_ebb()  # empty: returns at once, as faust's does
        for i in range(buffer.max_messages):
            buffer.pending.put_nowait(i)
        await buffer.wait_until_ebb()  # at the limit: still nothing
        assert flushed == []
        buffer.pending.put_nowait(-1)
        await buffer.wait_until_ebb()  # above it: faust's own wait, which flushes

    asyncio.run(fill_and_wait())
    assert flushed == [buffer.max_messages]


def test_the_copied_loop_differs_from_fausts_only_where_documented() -> None:
    stock = inspect.getsource(faust_consumer.Consumer._drain_messages).splitlines()
    ours = inspect.getsource(FastConsumer._drain_messages).splitlines()
    diff = difflib.unified_diff(stock, ours, lineterm="", n=0)
    changed = [line[0] + line[1:].strip() for line in diff
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    # The delivery line (see _deliver), the seek marks (see the module doc: "Seeks"), a
    # skipped batch's marker (_skip_batch), a type annotation, a cast mypy finds redundant,
    # and a qualified import.
    assert changed == [
        "-async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover",
        "+async def _drain_messages(self, fetcher: ServiceT) -> None:",
        "+deliver = self._deliver",
        "+seeking = self._seeking",
        "+skipped: Any = SkippedBatch  # compared with a message's headers (typed as headers)",
        "-flag_consumer_fetching = CONSUMER_FETCHING",
        "+flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING",
        "+if seeking:",
        "+await self._finish_seeks()",
        "-ait = cast(AsyncIterator, getmany(timeout=1.0))",
        "+ait = getmany(timeout=1.0)",  # typed already: faust's cast is redundant under mypy
        "+if tp in seeking:  # fetched before a seek moved its partition",
        "+continue",
        "-if commit_every is not None:",
        "+if commit_every is not None:  # noqa: SIM102 (verbatim)",
        "-await self.wait_first(",
        "-callback(message), self.suspend_flow.wait()",
        "-)",
        "-set_read_offset(tp, offset)",
        "+if message.value is None and type(message.headers) is skipped:",
        "+await self._skip_batch(tp, message)",
        "+else:",
        "+await deliver(callback, message)",
        "+if tp not in seeking:  # a seek during the delivery set it",
        "+set_read_offset(tp, offset)",
    ]


def test_the_copied_commit_differs_from_fausts_only_by_refusal_and_before_commit() -> None:
    """Refusal includes the membership check (:meth:`FastConsumer._still_member`)."""
    stock = inspect.getsource(faust_consumer.Consumer._commit_tps).splitlines()
    ours = inspect.getsource(FastConsumer._commit_tps).splitlines()
    diff = difflib.unified_diff(stock, ours, lineterm="", n=0)
    changed = [line[0] + line[1:].strip() for line in diff
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    docstring = inspect.getdoc(FastConsumer._commit_tps) or ""
    code = [line for line in changed if line[1:].strip('"') not in docstring]
    assert code == ["+if (self.commits_refused is not None or not self._still_member()",
                    "+or not self._coordinator_known()):",
                    "+return False",
                    "+if self.before_commit is not None:", "+await self.before_commit()"]


def test_install_fails_loudly_when_fausts_commit_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def _commit_tps(self: Any, tps: Any, start_new_transaction: bool) -> bool:
        """A faust release whose commit differs."""
        return False

    monkeypatch.setattr(faust_consumer.Consumer, "_commit_tps", _commit_tps)
    with pytest.raises(FastConsumerUnsupported, match=r"_commit_tps changed"):
        install_fast_consumer(new_app())


def test_a_commit_awaits_before_commit_after_choosing_its_offsets_and_before_committing(
) -> None:
    """The state of every event acked before the offsets were chosen is made durable by
    ``before_commit``; an event acked while it runs is not committed by this commit."""
    tp = TP("purchases", 0)
    log: list[Any] = []
    acked = {tp: 10}

    async def handle_attached(offsets: Mapping[TP, int]) -> None:
        return None

    async def before_commit() -> None:
        log.append(("before_commit", dict(acked)))
        acked[tp] = 11  # an agent acks another event meanwhile

    consumer = SimpleNamespace(
        before_commit=before_commit,
        commits_refused=None,
        _still_member=lambda: True, _coordinator_known=lambda: True,
        _filter_committable_offsets=lambda tps: {t: acked[t] for t in tps},
        _handle_attached=handle_attached,
        crash=None,
    )

    async def commit_offsets(offsets: Mapping[TP, int], start_new_transaction: bool) -> bool:
        log.append(("commit", dict(offsets)))
        return True

    consumer._commit_offsets = commit_offsets
    assert asyncio.run(FastConsumer._commit_tps(consumer, [tp], True))  # type: ignore[arg-type]
    assert log == [("before_commit", {tp: 10}), ("commit", {tp: 10})]

    async def failing() -> None:
        raise ConnectionError("broker gone")

    log.clear()
    consumer.before_commit = failing
    with pytest.raises(ConnectionError):  # nothing committed: the events come again
        asyncio.run(FastConsumer._commit_tps(consumer, [tp], True))  # type: ignore[arg-type]
    assert log == []
    consumer.before_commit = before_commit  # also with nothing to commit (state goes out)
    assert not asyncio.run(FastConsumer._commit_tps(consumer, [], True))  # type: ignore[arg-type]
    assert [entry[0] for entry in log] == ["before_commit"]

    # Refused (an agent crashed): nothing chosen, written or committed, from then on.
    log.clear()
    FastConsumer.refuse_commits(consumer, RuntimeError("a bug"))  # type: ignore[arg-type]
    FastConsumer.refuse_commits(consumer, ValueError("later"))  # type: ignore[arg-type]
    assert isinstance(consumer.commits_refused, RuntimeError)  # the first reason stays
    assert not asyncio.run(FastConsumer._commit_tps(consumer, [tp], True))  # type: ignore[arg-type]
    assert log == []


def test_a_revoke_writes_the_buffer_unless_commits_are_refused() -> None:
    """Partitions given up have their pending changes written first; after an agent crashed,
    not: a crashed batch's changes (an impression closed, its outcome never published) must
    not become durable while its events are delivered again to the next owner."""
    written: list[str] = []

    async def before_commit() -> None:
        written.append("write")

    consumer = SimpleNamespace(before_commit=before_commit, commits_refused=None,
                               _still_member=lambda: True)
    asyncio.run(FastConsumer.write_before_revoke(consumer))  # type: ignore[arg-type]
    assert written == ["write"]
    FastConsumer.refuse_commits(consumer, RuntimeError("a bug"))  # type: ignore[arg-type]
    asyncio.run(FastConsumer.write_before_revoke(consumer))  # type: ignore[arg-type]
    assert written == ["write"]


def test_a_consumer_the_group_dropped_writes_and_commits_nothing_more() -> None:
    """aiokafka resets its generation when the coordinator no longer knows the consumer (its
    session or a rebalance timed out, e.g. while a batch held the loop): its partitions are
    another worker's, and its pending changes would land in their changelogs after the new
    owner's. Neither the revoke nor a commit writes them; the worker is told once (it stops).
    Before the first assignment, with no generation yet, there is nothing to fence."""
    tp = TP("purchases", 0)
    written: list[str] = []
    dropped: list[BaseException] = []
    assigned: set[TP] = set()

    async def before_commit() -> None:
        written.append("write")

    # aiokafka's, before the first join
    coordinator = SimpleNamespace(generation=-1, member_id="", coordinator_id=0)
    consumer = _member(coordinator, before_commit, dropped, assigned)
    asyncio.run(FastConsumer.write_before_revoke(consumer))
    assigned.add(tp)
    coordinator.generation, coordinator.member_id = 3, "m-1"
    consumer._note_assignment(assigned)
    asyncio.run(FastConsumer.write_before_revoke(consumer))  # a rebalance: still the owner
    assert written == ["write", "write"] and not dropped

    coordinator.generation = -1  # reset_generation: dropped
    asyncio.run(FastConsumer.write_before_revoke(consumer))
    assert not asyncio.run(FastConsumer._commit_tps(consumer, [tp], True))
    assert written == ["write", "write"]
    assert len(dropped) == 1 and isinstance(dropped[0], DroppedByGroup)
    assert consumer.commits_refused is dropped[0]


def _member(coordinator: Any, before_commit: Callable[[], Awaitable[None]],
            dropped: list[BaseException], assigned: set[TP]) -> Any:
    """A stand-in FastConsumer with ``coordinator`` as its aiokafka group coordinator and the
    real membership methods."""
    consumer: Any = SimpleNamespace(
        before_commit=before_commit, commits_refused=None, on_dropped=dropped.append,
        _assigned_as=None, _coordinator=lambda: coordinator,
        app=SimpleNamespace(should_stop=False), assignment=lambda: assigned,
        log=logging.getLogger(__name__))
    for name in ("refuse_commits", "_still_member", "_dropped", "_note_assignment",
                 "_coordinator_known"):
        setattr(consumer, name, functools.partial(getattr(FastConsumer, name), consumer))
    return consumer


def test_a_consumer_that_rejoined_as_another_member_is_dropped_too() -> None:
    """Dropped while it rejoins (its JoinGroup answered "unknown member"), aiokafka rejoins at
    once as a new member and runs no second revoke: its generation is valid again before any
    commit could see -1. Its partitions were held by another member meanwhile, so what it has
    pending (and what it holds) is behind their changelogs. A new member id where its
    partitions were assigned to another one gives it away, at the assignment or a commit; a
    rebalance that keeps the member id does not."""
    tp = TP("purchases", 0)
    written: list[str] = []
    dropped: list[BaseException] = []
    assigned = {tp}

    async def before_commit() -> None:
        written.append("write")

    coordinator = SimpleNamespace(generation=3, member_id="m-1", coordinator_id=0)
    consumer = _member(coordinator, before_commit, dropped, assigned)
    consumer._note_assignment(assigned)
    coordinator.generation = 4  # an ordinary rebalance: same member
    consumer._note_assignment(assigned)
    asyncio.run(FastConsumer.write_before_revoke(consumer))
    assert written == ["write"] and not dropped

    coordinator.generation, coordinator.member_id = 5, "m-2"  # rejoined as a new member
    asyncio.run(FastConsumer.write_before_revoke(consumer))  # a commit before the assignment
    assert written == ["write"] and len(dropped) == 1

    again = _member(coordinator, before_commit, dropped := [], assigned)
    coordinator.member_id = "m-1"
    again._note_assignment(assigned)
    coordinator.member_id = "m-2"
    again._note_assignment(assigned)  # no commit in between: the assignment tells
    assert len(dropped) == 1 and again.commits_refused is dropped[0]

    idle = _member(coordinator, before_commit, dropped := [], set())
    idle._note_assignment(set())  # held nothing: a new member id is no drop to fence
    coordinator.member_id = "m-3"
    idle._note_assignment({tp})
    assert not dropped


def test_a_commit_while_the_coordinator_is_unknown_writes_nothing_and_waits() -> None:
    """Cut off from the broker (aiokafka forgets the coordinator when a request to it fails),
    a write begun now could reach the changelogs after the group handed the partitions on;
    the commit is skipped, not refused for good: the changes stay pending for the next one."""
    tp = TP("purchases", 0)
    written: list[str] = []
    coordinator = SimpleNamespace(generation=3, member_id="m-1", coordinator_id=None)

    async def before_commit() -> None:
        written.append("write")

    consumer = _member(coordinator, before_commit, [], {tp})
    consumer._filter_committable_offsets = lambda tps: {}
    assert not asyncio.run(FastConsumer._commit_tps(consumer, [tp], True))
    assert written == [] and consumer.commits_refused is None
    coordinator.coordinator_id = 1  # found again
    asyncio.run(FastConsumer._commit_tps(consumer, [tp], True))
    assert written == ["write"]


def test_fausts_commit_skips_a_one_offset_gap_at_the_head() -> None:
    """Why a worker whose agent crashed refuses commits (:meth:`FastConsumer.refuse_commits`)
    rather than let faust restart the agent: the events the crashed agent had taken are never
    acked, and once later ones are, faust commits past them when they are one offset, or the
    partition was never committed. Should faust fix this, the refusal stays right (a restart
    from the last commit) but this reason goes."""
    tp = TP("purchases", 0)

    def new_offset(acked: list[int], committed: int | None) -> int | None:
        consumer = SimpleNamespace(
            _acked={tp: list(acked)}, _gap={tp: None}, _acked_index={tp: set(acked)},
            _committed_offset={tp: committed})
        return faust_consumer.Consumer._new_offset(consumer, tp)  # type: ignore[arg-type]

    assert new_offset([32, 33], committed=31) == 34  # offset 31 never acked, committed past
    assert new_offset([1, 2], committed=None) == 3  # offset 0 never acked, committed past
    assert new_offset([33, 34], committed=31) is None  # a gap of two is seen


def test_install_passes_before_commit_to_this_apps_consumer_class() -> None:
    async def before_commit() -> None:
        pass

    app = new_app()
    install_fast_consumer(app, before_commit=before_commit)
    assert issubclass(app.transport.Consumer, FastConsumer)
    assert app.transport.Consumer.before_commit is before_commit
    assert FastConsumer.before_commit is None


def test_install_passes_on_suspended_to_this_apps_consumer_class() -> None:
    def on_suspended() -> None:
        pass

    app = new_app()
    install_fast_consumer(app, on_suspended=on_suspended)
    assert app.transport.Consumer.on_suspended is on_suspended
    assert FastConsumer.on_suspended is None


# -- delivery semantics ------------------------------------------------------------------------
class FakeConsumer(Service):
    """What ``_deliver`` uses of a consumer: mode's ``wait_first`` and ``suspend_flow``, and
    its direct routes (none here: every message goes through the callback)."""

    suspended_deliveries = 0
    direct_routes: dict[str, Any] = {}

    def __init__(self, on_suspended: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.on_suspended = on_suspended
        self._buffered_partitions: set[Any] = set()  # what a DirectQueue's clear reads

    async def deliver_stock(self, callback: Callable[[Any], Awaitable[Any]], message: Any) -> None:
        await self.wait_first(callback(message), self.suspend_flow.wait())  # faust 0.15.3's line

    async def deliver_fast(self, callback: Callable[[Any], Awaitable[Any]], message: Any) -> None:
        await FastConsumer._deliver(self, callback, message)  # type: ignore[arg-type]


@dataclass
class Callback:
    """A stand-in for the conductor: puts the message on a bounded queue."""

    queue: asyncio.Queue[Any]
    fail: str | None = None  # "before" the put, or "after" a put that had to wait
    log: list[str] = field(default_factory=list)

    async def __call__(self, message: Any) -> None:
        try:
            if self.fail == "before":
                raise ValueError("cannot decode")
            blocked = self.queue.full()
            await self.queue.put(message)
            if self.fail == "after" and blocked:
                raise ValueError("failed after waiting")
            self.log.append("done")
        except asyncio.CancelledError:
            self.log.append("cancelled")
            raise


@dataclass
class Outcome:
    returned: bool  # _deliver returned (False: it raised or is still blocked)
    raised: str | None
    callback: list[str]
    queued: list[Any]


async def scenario(name: str, path: str) -> Outcome:
    """Run one delivery of ``"m"`` through ``path`` ("stock" or "fast") under ``name``."""
    consumer = FakeConsumer()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
    callback = Callback(queue, fail={"raises": "before", "raises_after_wait": "after"}.get(name))
    if name not in ("free", "raises"):
        queue.put_nowait("earlier")  # full: the callback blocks
    if name in ("suspended_free", "suspended_full"):
        consumer.suspend_flow.set()
    if name == "suspended_free":
        queue.get_nowait()
    deliver = consumer.deliver_fast if path == "fast" else consumer.deliver_stock
    task = asyncio.ensure_future(deliver(callback, "m"))
    await quiescent()  # the delivery has run as far as it can
    if name in ("unblocked", "raises_after_wait"):
        assert queue.get_nowait() == "earlier"
    elif name == "rebalance":
        consumer.suspend_flow.set()
    elif name == "consumer_stops":
        consumer._stopped.set()
    elif name == "drain_cancelled":
        task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    raised = None
    if task in done and (task.cancelled() or task.exception()):
        raised = "CancelledError" if task.cancelled() else type(task.exception()).__name__
    else:
        task.cancel()
    await quiescent()  # cancellations of the leftover tasks have landed
    queued = [queue.get_nowait() for _ in range(queue.qsize())]
    return Outcome(task in done and raised is None, raised, callback.log, queued)


EXPECTED = {
    # name: (returned, raised, what the callback did, what is on the queue afterwards)
    "free": (True, None, ["done"], ["m"]),
    "unblocked": (True, None, ["done"], ["m"]),
    "rebalance": (True, None, ["cancelled"], ["earlier"]),
    "consumer_stops": (True, None, ["cancelled"], ["earlier"]),
    "suspended_free": (True, None, ["done"], ["m"]),
    "suspended_full": (True, None, ["cancelled"], ["earlier"]),
    "raises": (False, "ValueError", [], []),
    "raises_after_wait": (False, "ValueError", [], ["m"]),
    "drain_cancelled": (False, "CancelledError", ["cancelled"], ["earlier"]),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_delivery_behaves_as_stock_faust(name: str) -> None:
    stock = asyncio.run(scenario(name, "stock"))
    fast = asyncio.run(scenario(name, "fast"))
    assert fast == stock
    assert (fast.returned, fast.raised, fast.callback, fast.queued) == EXPECTED[name]


def test_a_callback_that_does_not_block_runs_without_tasks_or_a_turn_of_the_loop() -> None:
    """Inline deliveries go back to back: nothing else that is ready (an agent, a timer) runs
    between them; the drain loop yields every 100 messages itself."""
    async def main() -> tuple[int, list[str], int]:
        loop = asyncio.get_running_loop()
        created = 0

        def counting_factory(loop: asyncio.AbstractEventLoop,
                             coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop)

        consumer = FakeConsumer()
        callback = Callback(asyncio.Queue())
        loop.set_task_factory(counting_factory)
        order: list[str] = []
        for i in range(3):
            loop.call_soon(order.append, f"other{i}")  # e.g. the agent, a timer
            await consumer.deliver_fast(callback, i)
            order.append(f"delivered{i}")
        return created, list(order), consumer.suspended_deliveries  # before any turn

    created, order, suspended = asyncio.run(main())
    assert created == 0
    assert order == ["delivered0", "delivered1", "delivered2"]  # no "other": no turn taken
    assert suspended == 0


def test_a_callback_that_blocks_is_counted_and_continued_in_one_task() -> None:
    hooked: list[str] = []

    async def main() -> tuple[int, list[str]]:
        consumer = FakeConsumer(on_suspended=lambda: hooked.append("suspended"))
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        queue.put_nowait("earlier")
        callback = Callback(queue)
        delivery = asyncio.ensure_future(consumer.deliver_fast(callback, "m"))
        await until(lambda: consumer.suspended_deliveries, "the delivery to block")
        assert queue.get_nowait() == "earlier"
        await delivery
        assert queue.get_nowait() == "m"
        return consumer.suspended_deliveries, callback.log

    assert asyncio.run(main()) == (1, ["done"])
    assert hooked == ["suspended"]  # the metric's hook, once per blocked delivery


def test_a_continuation_cancelled_before_it_ran_cleans_up_its_coroutine() -> None:
    async def main() -> tuple[bool, list[str]]:
        blocker = asyncio.get_running_loop().create_future()
        log: list[str] = []

        async def waits() -> None:
            try:
                await blocker
            finally:
                log.append("cleaned up")

        coro = waits()
        pending = coro.send(None)
        assert pending is blocker
        task = asyncio.ensure_future(_Continuation(coro, pending))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return blocker.cancelled(), log

    assert asyncio.run(main()) == (True, ["cleaned up"])


# -- seeks: the drain loop against a fake fetcher ------------------------------------------------
TP0 = TP("purchases", 0)


class FakeFetcher:
    """One partition of ``size`` records behind aiokafka's consumer, as the drain loop sees it:
    a fetch hands out up to ``batch`` records from the position and moves the position past
    them; a seek sets the position. Stops the drain loop (its ``fetcher``) once a fetch finds
    nothing left."""

    def __init__(self, size: int, batch: int,
                 skipped: Mapping[int, SkippedBatch] | None = None) -> None:
        self.size, self.batch = size, batch
        self.skipped = skipped or {}  # markers handed out at their last offset instead
        self.position = 0
        self.fetches = 0
        self.before_fetch: Callable[[int], Awaitable[None]] | None = None
        self._stopped = asyncio.Event()

    async def getmany(self, timeout: float) -> Any:
        self.fetches += 1
        if self.before_fetch is not None:
            await self.before_fetch(self.fetches)  # e.g. a seek while the fetch is under way
        start = self.position
        end = min(start + self.batch, self.size)
        self.position = end
        if start >= self.size:
            self._stopped.set()
            return
        for offset in range(start, end):
            marker = self.skipped.get(offset)
            if marker is not None:  # as faust's _to_message makes it of the fetch's marker
                yield TP0, SimpleNamespace(topic=TP0.topic, partition=TP0.partition,
                                           offset=offset, key=None, value=None,
                                           headers=marker)
                continue
            if any(s.first_offset <= offset <= s.last_offset for s in self.skipped.values()):
                continue  # skipped by the fetch
            yield TP0, SimpleNamespace(topic=TP0.topic, partition=TP0.partition, offset=offset,
                                       key=None, value=offset, headers=())


def seekable_consumer(fetcher: FakeFetcher, committed: int, *, count_commits: bool = True,
                      **conf: Any) -> FastConsumer:
    """A FastConsumer (never started) whose fetches and seeks go to ``fetcher``; the
    committed offset of the partition is ``committed``; ``conf``: the app's settings."""
    app = new_app(**conf)
    install_fast_consumer(app, count_commits=count_commits)
    consumer = app.consumer
    assert isinstance(consumer, FastConsumer)

    async def move(partition: TP, offset: int) -> None:
        fetcher.position = offset

    async def seek_positions(positions: Mapping[TP, int]) -> None:
        for tp, offset in positions.items():
            await move(tp, offset)

    async def seek_wait(partitions: Mapping[TP, int]) -> None:
        for tp, offset in partitions.items():
            await move(tp, offset)
            consumer._read_offset[tp] = offset  # what faust's thread does too

    async def seek_to_committed() -> dict[TP, int]:
        fetcher.position = committed
        return {TP0: committed}

    patches: dict[str, Any] = {
        "getmany": fetcher.getmany, "assignment": lambda: {TP0}, "_seek": move,
        "_seek_positions": seek_positions, "seek_to_committed": seek_to_committed,
    }
    for name, value in patches.items():
        setattr(consumer, name, value)
    consumer._thread.seek_wait = seek_wait  # type: ignore[method-assign]
    return consumer


#: The seeks recovery makes, ours (marking) and stock faust's, each back to offset 1.
SEEKS: dict[str, Callable[[FastConsumer], Awaitable[None]]] = {
    "seek": lambda c: c.seek(TP0, 1),
    "seek_wait": lambda c: c.seek_wait({TP0: 1}),
    "perform_seek": lambda c: c.perform_seek(),  # to the committed offset, 1
}
STOCK_SEEKS: dict[str, Callable[[FastConsumer], Awaitable[None]]] = {
    "seek": lambda c: faust_aiokafka.Consumer.seek(c, TP0, 1),
    "seek_wait": lambda c: faust_aiokafka.Consumer.seek_wait(c, {TP0: 1}),
    "perform_seek": lambda c: faust_aiokafka.Consumer.perform_seek(c),
}


def drain_with_a_seek_mid_batch(loop: str, seek: str) -> tuple[list[int], int | None]:
    """10 records fetched 5 at a time; while record 2 is delivered, recovery seeks the
    partition back to its committed offset 1 (the rebalance clears the stream buffers holding
    records 0..2). Runs faust's drain loop and seeks (``loop="stock"``) or ours (``"fast"``).
    Returns the offsets delivered after the seek, and the read offset at the end."""
    async def main() -> tuple[list[int], int | None]:
        fetcher = FakeFetcher(size=10, batch=5)
        consumer = seekable_consumer(fetcher, committed=1)
        after_seek: list[int] = []
        sought = False

        async def on_message(message: Any) -> None:
            nonlocal sought
            if sought:
                after_seek.append(message.offset)
            elif message.offset == 2:
                sought = True
                await (STOCK_SEEKS if loop == "stock" else SEEKS)[seek](consumer)

        consumer.callback = on_message
        drain = (FastConsumer._drain_messages if loop == "fast"
                 else faust_consumer.Consumer._drain_messages)
        await asyncio.wait_for(drain(consumer, fetcher), timeout=10)  # type: ignore[arg-type]
        return after_seek, consumer._read_offset[TP0]

    return asyncio.run(main())


@pytest.mark.parametrize("seek", list(SEEKS))
def test_stock_fausts_drain_loop_drops_records_after_a_seek_mid_batch(seek: str) -> None:
    """The bug of issue 6, in stock faust: the rest of the batch fetched before the seek is
    delivered, its read offset overwrites the seek's, and the records from the sought offset
    up to it are then dropped (never processed, never acked: the commit stalls at 1)."""
    after_seek, _ = drain_with_a_seek_mid_batch("stock", seek)
    assert after_seek == [3, 4, 4, 5, 6, 7, 8, 9]
    assert {1, 2} - set(after_seek)  # lost


@pytest.mark.parametrize("seek", list(SEEKS))
def test_after_a_seek_mid_batch_every_record_from_the_sought_offset_is_delivered(
        seek: str) -> None:
    after_seek, read_offset = drain_with_a_seek_mid_batch("fast", seek)
    assert after_seek == list(range(1, 10))  # the stale 3, 4 skipped, then 1.. fetched again
    assert read_offset == 9


def test_records_fetched_while_a_seek_was_under_way_are_fetched_again() -> None:
    """Recovery seeks while the consumer thread waits on a fetch: the fetch hands out records
    from the sought offset and moves the position past them. The loop skips them (it cannot
    tell them from stale ones) and so must seek back before its next fetch, or lose them."""
    async def main() -> tuple[list[int], list[int]]:
        fetcher = FakeFetcher(size=10, batch=5)
        consumer = seekable_consumer(fetcher, committed=1)
        delivered: list[int] = []

        async def seek_during_fetch(fetch: int) -> None:
            if fetch == 2:
                delivered.append(-1)
                await consumer.perform_seek()

        async def on_message(message: Any) -> None:
            delivered.append(message.offset)

        fetcher.before_fetch = seek_during_fetch
        consumer.callback = on_message
        await asyncio.wait_for(FastConsumer._drain_messages(consumer, fetcher),  # type: ignore
                               timeout=10)
        seek = delivered.index(-1)
        return delivered[:seek], delivered[seek + 1:]

    before, after = asyncio.run(main())
    assert before == [0, 1, 2, 3, 4]
    assert after == [1, 2, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("count_commits", [True, False])
def test_the_drain_loop_commits_every_so_many_acks_unless_told_not_to(
        count_commits: bool) -> None:
    """Stock faust's loop commits, in the middle of its deliveries, once
    ``broker_commit_every`` events were acked since the last commit; with
    ``count_commits=False`` (the worker) it never does, and commits come from faust's
    interval timer alone."""
    async def main() -> list[int]:
        fetcher = FakeFetcher(size=10, batch=5)
        consumer = seekable_consumer(fetcher, committed=0, count_commits=count_commits,
                                     broker_commit_every=3)
        delivered = 0
        commits: list[int] = []  # how many records were delivered at each commit

        async def commit(*_: Any, **__: Any) -> bool:
            commits.append(delivered)
            return True

        async def on_message(message: Any) -> None:
            nonlocal delivered
            delivered += 1
            consumer._n_acked += 1  # as the agent's acknowledgement would

        consumer.commit = commit  # type: ignore[method-assign]
        consumer.callback = on_message
        await asyncio.wait_for(FastConsumer._drain_messages(consumer, fetcher),  # type: ignore
                               timeout=10)
        assert delivered == 10
        return commits

    assert asyncio.run(main()) == ([3, 6, 9] if count_commits else [])


def test_a_skipped_batch_is_reported_and_its_offsets_count_as_done_not_delivered() -> None:
    """The fetch skipped offsets 3..5 (a batch it could not parse: fetched_records) and hands
    the loop a marker at 5: the loop delivers the records around it, hands the batch to
    on_skipped_batch and makes its offsets a gap, so the commit passes them."""
    skipped = SkippedBatch(TP0.topic, TP0.partition, 3, 5, "CorruptRecordException: crc", b"")

    async def main() -> tuple[list[int], list[SkippedBatch], FastConsumer]:
        fetcher = FakeFetcher(size=10, batch=4, skipped={5: skipped})
        app = new_app()
        reported: list[SkippedBatch] = []

        async def on_skipped_batch(batch: SkippedBatch) -> None:
            reported.append(batch)

        install_fast_consumer(app, on_skipped_batch=on_skipped_batch)
        consumer = app.consumer
        assert isinstance(consumer, FastConsumer)
        consumer.getmany = fetcher.getmany  # type: ignore[method-assign]
        app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
        delivered: list[int] = []

        async def on_message(message: Any) -> None:
            delivered.append(message.offset)

        consumer.callback = on_message
        await asyncio.wait_for(FastConsumer._drain_messages(consumer, fetcher),  # type: ignore
                               timeout=10)
        return delivered, reported, consumer

    delivered, reported, consumer = asyncio.run(main())
    assert delivered == [0, 1, 2, 6, 7, 8, 9]
    assert reported == [skipped]
    assert consumer.skipped_batches == 1
    assert consumer._read_offset[TP0] == 9
    consumer._acked[TP0] = [0, 1, 2, 6]  # the agents acknowledged these
    assert consumer._new_offset(TP0) == 7  # past the skipped batch


def test_a_skipped_batch_met_again_is_reported_once_per_process() -> None:
    """A changelog's unreadable batch is met by every recovery (a memory store recovers from
    the start) and a global table's by every worker: one dead letter per batch and process."""
    from types import SimpleNamespace

    skipped = SkippedBatch(TP0.topic, TP0.partition, 3, 5, "CorruptRecordException: crc", b"")
    app = new_app()
    reported: list[SkippedBatch] = []

    async def on_skipped_batch(batch: SkippedBatch) -> None:
        reported.append(batch)

    install_fast_consumer(app, on_skipped_batch=on_skipped_batch)
    consumer = app.consumer
    assert isinstance(consumer, FastConsumer)
    app.topics.acks_enabled_for = lambda topic: False  # type: ignore[method-assign]

    async def main() -> None:
        for _ in range(2):
            await consumer._skip_batch(TP0, SimpleNamespace(headers=skipped))  # type: ignore
        other = SkippedBatch(TP0.topic, TP0.partition, 9, 9, "UnsupportedCodecError", b"")
        await consumer._skip_batch(TP0, SimpleNamespace(headers=other))  # type: ignore

    asyncio.run(main())
    assert [b.first_offset for b in reported] == [3, 9] and consumer.skipped_batches == 3


def test_the_worker_commits_on_its_interval_only() -> None:
    from streamer.app.factory import create_app
    from streamer.settings import Settings

    consumer = create_app(Settings(worker={"app_id": "interval-commits"})).app.consumer
    assert isinstance(consumer, FastConsumer)
    assert consumer._commit_every is None and not consumer.count_commits
    assert FastConsumer.count_commits


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_perform_seek_moves_stream_partitions_without_a_commit_to_their_earliest_offset(
        reset: str) -> None:
    a, b, c, changelog = TP("p", 0), TP("p", 1), TP("p", 2), TP("app-table-changelog", 0)
    app = faust.App("fast-consumer-unit", broker="kafka://127.0.0.1:9", store="memory://",
                    consumer_auto_offset_reset=reset)
    install_fast_consumer(app)
    consumer = app.consumer
    assert isinstance(consumer, FastConsumer)
    moved: list[dict[TP, int]] = []

    async def seek_to_committed() -> dict[TP, int | None]:
        return {a: None, b: 0, c: 7, changelog: None}  # aiokafka moves c only

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return {tp: {a: 3, b: 0}[tp] for tp in tps}

    async def seek_positions(positions: Mapping[TP, int]) -> None:
        moved.append(dict(positions))

    for name, value in {"seek_to_committed": seek_to_committed,
                        "assignment": lambda: {a, b, c, changelog},
                        "earliest_offsets": earliest_offsets, "_seek_positions": seek_positions,
                        "_is_changelog_tp": lambda tp: tp == changelog}.items():
        setattr(consumer, name, value)
    asyncio.run(consumer.perform_seek())

    earliest = {a: 3, b: 0} if reset == "earliest" else {}
    assert moved == ([earliest] if earliest else [])
    # Marked with the positions established (not those left where they are) ...
    assert {tp: position for tp, (_, position) in consumer._seeking.items()} == {c: 7} | earliest
    # ... and faust's bookkeeping as stock perform_seek does it.
    assert dict(consumer._read_offset) == {a: None, b: 0, c: 7, changelog: None}
    assert dict(consumer._committed_offset) == {b: None, c: 7}


def test_marks_are_cleared_before_the_next_fetch_except_those_a_new_seek_replaced() -> None:
    a, b, gone = TP("p", 0), TP("p", 1), TP("p", 2)
    consumer = new_app_consumer()
    reseeks: list[dict[TP, int]] = []

    async def seek_positions(positions: Mapping[TP, int]) -> None:
        reseeks.append(dict(positions))
        if len(reseeks) == 1:
            await consumer.seek(a, 8)  # a seek arrives during the re-seek

    async def seek(partition: TP, offset: int) -> None:
        pass

    consumer._seek_positions = seek_positions  # type: ignore[method-assign]
    consumer._seek = seek  # type: ignore[method-assign]
    consumer.assignment = lambda: {a, b}  # type: ignore[method-assign]

    async def main() -> None:
        await consumer.seek(a, 5)
        await consumer.seek_wait({b: -1})  # recovery's "from the start"
        consumer._mark_seeking({gone: 2})  # revoked since
        await consumer._finish_seeks()
        assert reseeks == [{a: 5, b: 0}]
        assert [(tp, position) for tp, (_, position) in consumer._seeking.items()] == [(a, 8)]
        await consumer._finish_seeks()
        assert reseeks[1:] == [{a: 8}]
        assert consumer._seeking == {}

    async def thread_seek_wait(partitions: Mapping[TP, int]) -> None:
        pass

    consumer._thread.seek_wait = thread_seek_wait  # type: ignore[method-assign]
    asyncio.run(main())


def new_app_consumer() -> FastConsumer:
    app = new_app()
    install_fast_consumer(app)
    consumer = app.consumer
    assert isinstance(consumer, FastConsumer)
    return consumer


def test_partition_states_report_fausts_offsets_and_the_seek_marks() -> None:
    consumer = new_app_consumer()  # never started: no fetcher state to report
    consumer._read_offset[TP0] = 41
    consumer._committed_offset[TP0] = 30
    consumer._acked[TP0].extend([33, 34])
    consumer._paused_partitions.add(TP0)
    consumer._mark_seeking({TP0: 30})
    (row,) = consumer.partition_states()
    assert row == {"tp": "purchases[0]", "assigned": False, "active": False, "paused": True,
                   "buffered": False, "read_offset": 41, "committed_offset": 30,
                   "acked_pending": 2, "acked_min": 33, "gaps": 0, "seek_mark": 30,
                   "position": None, "highwater": None, "fetch_paused": None,
                   "awaiting_reset": None}
