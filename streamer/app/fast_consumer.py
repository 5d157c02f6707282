"""A faust consumer that hands each fetched message to the conductor without asyncio tasks.

Written against faust-streaming 0.15.3 (mode-streaming 0.7.1, aiokafka 0.14, Python 3.11).

Stock faust delivers every message from its drain loop
(``faust.transport.consumer.Consumer._drain_messages``) with::

    await self.wait_first(callback(message), self.suspend_flow.wait())

and mode's ``Service.wait_first`` wraps each argument, plus the service's ``stopped`` and
``crashed`` events, in a task and waits for the first with ``asyncio.wait``: four tasks, a
wait and their cancellation per message, most of faust's per-message CPU. The race exists for
one case: the callback (``Conductor.on_message``) can block, on a full stream queue or on flow
control suspended for a rebalance, and a blocked delivery must not hold the drain loop (and with
it the rebalance) hostage; when the flow is suspended the wait ends and the blocked delivery is
cancelled.

In the common case the callback never blocks: it decodes, puts the event on each channel's queue
and returns without yielding to the event loop. :class:`FastConsumer` runs the callback's first
step inline. If that step finishes the callback, the message is delivered and nothing could have
raced it: that is the outcome the stock race gives too (its tasks run the same step, and a
callback done in its first step is done whatever the suspend event says). If the callback
suspends instead (on a full queue, suspended flow, a producer buffer over its limit), the rest of
it runs in a task that races ``suspend_flow`` through the very same ``wait_first`` call as stock
faust, so the blocking cases keep stock semantics. After an inline delivery the loop goes on to
the next message without yielding to the event loop; faust's loop itself yields once every 100
messages, which gives timers, web requests and the agents their turn (see
:meth:`FastConsumer._deliver`).

**Seeks.** The copy also fixes a race of stock faust's loop that loses records or stalls a
partition after recovery or a rebalance (issue 6: a worker SIGKILLed and restarted, or a group
rebalancing, sometimes never committed a purchases partition again, once lost a purchase). The
loop iterates over a batch ``getmany`` already fetched, delivering a record and then setting the
partition's read offset to the record's offset. Meanwhile recovery seeks the partitions back to
their committed offsets (``perform_seek``, which also sets each read offset to the committed
one), or seeks changelogs (``seek_wait``). The loop knows nothing of it: it keeps delivering the
rest of the batch it fetched before the seek (from aiokafka's consumer thread, which moved the
position past it), and its ``set_read_offset`` overwrites the read offset the seek set. Once the
fetcher reads again from the sought offset, every record below that stale read offset is
"DROPPED" by the loop's ``offset >= r_offset`` test; the stale records it did deliver went into
stream buffers that the rebalance clears. Those offsets are never acknowledged, so the
partition's commit never passes them (a stall); and when the stale read offset lies more than
one below the next record fetched, the loop's gap bookkeeping (``_add_gap``) counts the offsets
between as done although nobody processed them (a lost record). A seek made while the consumer
thread is fetching has the same effect when that fetch hands out records from before the seek.

So here a seek (:meth:`FastConsumer.perform_seek`, :meth:`~FastConsumer.seek`,
:meth:`~FastConsumer.seek_wait`) *marks* the partitions it moves with the offset it moves them
to (``seek``/``seek_wait`` before and again after moving them, ``perform_seek`` once the
committed offsets are known, in one step with the read offsets). The loop neither delivers
records of a marked partition nor sets its read offset; before its next fetch it seeks every
marked partition again to the position the seek established (whatever a fetch in flight did to
the position meanwhile) and clears the marks; a seek that arrives during that re-seek keeps its
mark. Records skipped that way are fetched again from the sought position.
:meth:`FastConsumer.perform_seek` also moves stream partitions that have no committed offset to
their earliest offset when ``consumer_auto_offset_reset`` is ``earliest``: stock faust (aiokafka's
``seek_to_committed``) leaves such a partition wherever the fetcher got to, so records fetched
but not processed before the seek were never read again.

**Unreadable batches.** A record batch the fetch could not parse is skipped there
(:mod:`streamer.app.fetched_records`) and arrives here as a marker record where the batch was;
the loop does not deliver it but counts it, has it dead-lettered, and counts its offsets as done
(:meth:`FastConsumer._skip_batch`).

The drain loop is faust's, copied verbatim except for the delivery line, the seek marks, the
skipped batch's marker (and two type annotations); ``tests/unit/test_fast_consumer.py`` pins the
difference and shows stock
faust's loop dropping records after a seek mid-batch. :func:`install_fast_consumer` refuses to
install (:class:`FastConsumerUnsupported`) unless faust's loop is still byte for byte the one it
was copied from. Upgrading faust therefore fails at start-up, not silently.

Measured with ``PYTHONPATH=. python benchmarks/faust_consumer.py --events 20000 --repeats 5``
(a no-op agent, uvloop, one embedded broker, same events, interleaved runs, medians): 55.7 us
of CPU per event with faust's consumer, 24.5 us with this one (2.3x less); 11.4k vs 26.7k
events/s, while the delivery still yielded after every message (1.8x less CPU, 1.8x the rate,
since it does not: :meth:`FastConsumer._deliver`). Of the stock 56 us, ~16 us are
``wait_first`` itself and ~10 us the event loop stepping its tasks (py-spy, ``--profile``).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
import json
import types
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any, cast

import faust
from aiokafka.protocol.commit import OffsetCommitRequest
from faust.exceptions import ProducerSendError
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP, Message
from faust.types.transports import ConsumerCallback
from mode import Service, ServiceT

from streamer.app.batching import DirectQueue
from streamer.app.fetched_records import SkippedBatch, report_skipped_batches
from streamer.app.kafka import SKIPPED_KEY

__all__ = ["FAUST_VERSION", "DroppedByGroup", "FastConsumer", "FastConsumerUnsupported",
           "install_fast_consumer"]

#: The faust-streaming release whose drain loop :meth:`FastConsumer._drain_messages` copies.
FAUST_VERSION = "0.15.3"

#: sha256 of ``inspect.getsource(faust.transport.consumer.Consumer._drain_messages)`` in
#: faust-streaming 0.15.3: install refuses any other loop.
DRAIN_MESSAGES_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


#: sha256 of ``inspect.getsource(faust.transport.consumer.Consumer._commit_tps)`` in
#: faust-streaming 0.15.3 (:meth:`FastConsumer._commit_tps` copies it).
COMMIT_TPS_SHA256 = "a20e230b05ae8b151ac9f78fa77a102003a948c66c24c9d3588e39cb12859b7e"


#: sha256 of the sources of faust's ``ProducerBuffer.wait_until_ebb`` and of its ``size``
#: property in faust-streaming 0.15.3 (:func:`_fast_ebb` answers the first's question).
WAIT_UNTIL_EBB_SHA256 = "758dd5744044071bbc79609fa8e5bfc339818f186bc19b723de2c4c877412e00"
PRODUCER_BUFFER_SIZE_SHA256 = "b543a978fdece62e7d7c434eea6e842995d67cc1d3288434f5f26ad72c10a779"


#: The changelog key a skipped batch is applied under (:meth:`FastConsumer._skip_batch`): JSON,
#: as faust writes a table's keys.
_SKIPPED_CHANGELOG_KEY = json.dumps(SKIPPED_KEY).encode()


class FastConsumerUnsupported(RuntimeError):
    """faust's internals are not the ones :class:`FastConsumer` was written against."""


class DroppedByGroup(RuntimeError):
    """The consumer group no longer counts this worker in (see
    :meth:`FastConsumer._still_member`)."""


class _Continuation(Coroutine[Any, Any, Any]):
    """The rest of a coroutine whose first step already ran and yielded ``pending``.

    A task drives it like the original coroutine: the task's first ``send(None)`` gets
    ``pending`` (the future the coroutine is blocked on, still flagged as awaited, so the task
    waits for it), every later ``send``/``throw`` goes straight to the coroutine. A cancel
    before that first step cancels ``pending`` and throws into the coroutine, as a task
    cancelled while it waits on a future does, so the coroutine's own cleanup runs.
    """

    __slots__ = ("_coro", "_pending", "_started")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            return self._pending
        return self._coro.send(value)

    def throw(self, *exc: Any) -> Any:
        if not self._started:
            self._started = True
            if isinstance(self._pending, asyncio.Future):
                self._pending.cancel()
        return self._coro.throw(*exc)

    def close(self) -> None:
        self._coro.close()

    def __next__(self) -> Any:
        return self.send(None)

    def __iter__(self) -> _Continuation:
        return self

    def __await__(self) -> Generator[Any, None, Any]:
        return cast(Generator[Any, None, Any], self)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread with the fetch wait it hard-codes (1,500 ms) replaceable."""

    fetch_max_wait_ms: int | None = None

    async def on_start(self) -> None:
        # In the consumer's own thread, before it starts: its fetches hand the drain loop a
        # marker for each record batch they skip (FastConsumer._skip_batch).
        report_skipped_batches()
        await super().on_start()

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if self.fetch_max_wait_ms is not None:
            consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read when it starts
        return consumer


class FastConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, delivering messages that do not block without tasks.

    Differs from :class:`faust.transport.drivers.aiokafka.Consumer` in :meth:`_drain_messages`
    (faust's, with the delivery line and the seek marks changed) and :meth:`_deliver` (that
    line, and the messages of :attr:`direct_topics` handed to their agent's
    :class:`~streamer.app.batching.DirectQueue` without the conductor); in the seeks, which
    mark the partitions they move (:meth:`perform_seek`, :meth:`seek`, :meth:`seek_wait`, see
    the module doc); in :meth:`highwaters` when an
    :attr:`end_offsets_check` is given (it is, against the embedded broker); and in
    :meth:`_commit_tps`, which awaits :attr:`before_commit` before it commits (the worker's
    table writes become durable there) and commits nothing once :meth:`refuse_commits` was
    called.
    """

    #: Deliveries whose callback suspended and so went the stock way (a task racing
    #: ``suspend_flow``): a full stream queue, suspended flow control, a full producer buffer.
    suspended_deliveries: int = 0

    #: Called once per such delivery (e.g. a metric's ``inc``); None: only counted above.
    on_suspended: Callable[[], Any] | None = None

    #: Record batches skipped because they could not be parsed (:meth:`_skip_batch`).
    skipped_batches: int = 0

    #: Awaited with each such batch (e.g. to dead-letter it); None: only logged and counted.
    on_skipped_batch: Callable[[SkippedBatch], Awaitable[Any]] | None = None

    #: Corrects the end offsets the broker reports (faust recovers tables up to them), e.g.
    #: :func:`streamer.app.kafka.fetched_end_offsets`; None trusts the broker.
    end_offsets_check: Callable[[dict[TP, int]], Awaitable[dict[TP, int]]] | None = None

    #: The broker's longest wait before answering a fetch (None: faust's 1,500 ms). The
    #: embedded broker answers a fetch on an empty partition only after this long even when
    #: data arrives meanwhile, so each hop of a pipeline waits up to this long.
    fetch_max_wait_ms: int | None = None

    #: Awaited by every commit after the offsets to commit are chosen and before they are
    #: (see :meth:`_commit_tps`): the worker's table writes become durable there
    #: (:meth:`streamer.app.tables.WriteBuffer.write`). None: nothing to wait for.
    before_commit: Callable[[], Awaitable[Any]] | None = None

    #: Why this consumer commits nothing more (:meth:`refuse_commits`); None: it commits.
    commits_refused: BaseException | None = None

    #: Called once with a :class:`DroppedByGroup` when the group turns out to have dropped
    #: this consumer before it wrote (:meth:`_still_member`): the worker stops, as after an
    #: agent crash. None: it only commits nothing more.
    on_dropped: Callable[[BaseException], Any] | None = None

    #: The group member id this consumer's partitions were last assigned to (None: none held
    #: yet, or the last assignment was empty): a rejoin as another member means the group
    #: dropped this one in between (:meth:`_still_member`).
    _assigned_as: str | None = None

    #: Whether the drain loop also commits once ``broker_commit_every`` events were acked
    #: since the last commit, as stock faust's does. False: commits come from faust's commit
    #: timer only (every ``broker_commit_interval``), as Kafka's own consumers and Kafka
    #: Streams commit (on an interval). Why the worker turns it off: the loop's commit stops
    #: delivery until the commit is done (with :attr:`before_commit`, until the broker has the
    #: worker's table writes: 0.24-0.31 s each under a backlog), and at ~12k events/s it came
    #: about every second besides the timer's, each writing every hot anchor back again
    #: (benchmarks/README.md, "Commits on the interval only").
    count_commits: bool = True

    #: Partitions a seek moved since the drain loop last fetched: the seek's id and the offset
    #: it moved them to.
    _seeking: dict[TP, tuple[int, int]]
    _seek_ids: Iterator[int]

    #: Topics whose messages go straight to their one agent's :class:`DirectQueue`
    #: (:func:`streamer.app.batching.take_batches`), not through faust's conductor.
    direct_topics: frozenset[str] = frozenset()

    #: The :class:`DirectQueue` of each of :attr:`direct_topics` (made by ``__init__``).
    direct_routes: Mapping[str, DirectQueue] = types.MappingProxyType({})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._seeking = {}
        self._seek_ids = itertools.count()
        super().__init__(*args, **kwargs)
        if not self.count_commits:
            self._commit_every = None  # the loop's test (verbatim faust) then never commits
        producer_full = _fast_ebb(self.app.producer.buffer)
        if self.direct_topics:
            maxsize = self.app.conf.stream_buffer_maxsize
            self.direct_routes = {
                name: DirectQueue(self, self.app.flow_control, maxsize,
                                  producer_full, self.app.producer.buffer.wait_until_ebb)
                for name in self.direct_topics}

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        thread = _ConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        return thread

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """faust's end offsets, passed through :attr:`end_offsets_check` when set."""
        ends = await super().highwaters(*partitions)
        check = self.end_offsets_check
        return ends if check is None else await check(dict(ends))

    def partition_states(self) -> list[dict[str, Any]]:
        """Per partition: what faust's consumer and aiokafka's fetcher think of it, for a
        stall's diagnosis (``kill -USR2`` on a worker logs it). Reads another thread's state
        without a lock: good enough for a dump, not for decisions. Never raises."""
        fetcher_states: dict[TP, Any] = {}
        try:
            aio = getattr(self._thread, "_consumer", None)
            subscription = aio._subscription.subscription if aio is not None else None
            if subscription is not None and subscription.assignment is not None:
                assignment = subscription.assignment
                fetcher_states = {faust_consumer.ensure_TP(tp): assignment.state_value(tp)
                                  for tp in assignment.tps}
        except Exception:  # a diagnostic dump must not fail
            fetcher_states = {}
        active = self._active_partitions or set()
        tps = set(fetcher_states) | set(self._read_offset) | set(self._committed_offset)
        rows = []
        for tp in sorted(tps):
            state = fetcher_states.get(tp)
            acked = self._acked.get(tp) or []
            rows.append({
                "tp": f"{tp.topic}[{tp.partition}]",
                "assigned": state is not None,
                "active": tp in active,
                "paused": tp in self._paused_partitions,
                "buffered": tp in self._buffered_partitions,
                "read_offset": self._read_offset.get(tp),
                "committed_offset": self._committed_offset.get(tp),
                "acked_pending": len(acked),
                "acked_min": min(acked) if acked else None,
                "gaps": len(self._gap[tp]) if tp in self._gap else 0,
                "seek_mark": self._seeking[tp][1] if tp in self._seeking else None,
                "position": getattr(state, "_position", None),
                "highwater": getattr(state, "highwater", None),
                "fetch_paused": getattr(state, "paused", None),
                "awaiting_reset": getattr(state, "awaiting_reset", None),
            })
        return rows

    # -- commits --------------------------------------------------------------------------------
    def refuse_commits(self, reason: BaseException) -> None:
        """Commit nothing from now on (``reason``: why, e.g. the exception an agent raised).

        For a worker about to stop after an agent crashed (:mod:`streamer.app.crashes`): the
        events the agent had taken were never acknowledged, and faust's commit would skip
        them once later events are (its head-gap check in ``Consumer._new_offset`` misses a
        gap of one offset, and every gap on a partition never committed). Refused, every
        event after the last commit is delivered again after the restart."""
        if self.commits_refused is None:
            self.commits_refused = reason

    async def write_before_revoke(self) -> None:
        """Await :attr:`before_commit` for partitions this worker gives up: their pending
        changes must reach their changelogs before the next owner reads them, never after
        (faust has waited for the agents' batches; a commit racing this one may have skipped
        it). Not once commits are refused: the changes of events never acknowledged (a crashed
        agent's: e.g. impressions closed whose outcomes were never published) must not become
        durable without them; the next owner gets those events again. Nor when the group
        dropped this consumer meanwhile (:meth:`_still_member`)."""
        if (self.commits_refused is None and self.before_commit is not None
                and self._still_member()):
            await self.before_commit()

    def _coordinator(self) -> Any:
        """aiokafka's group coordinator of this consumer (None before the consumer starts)."""
        return getattr(getattr(self._thread, "_consumer", None), "_coordinator", None)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """faust's, after noting the member the partitions are assigned to: partitions held
        and then assigned to another member id mean the group dropped this consumer in between
        (aiokafka rejoins as a new member at once, and runs no second revoke), which
        :meth:`_still_member` may not have seen (no commit fell in between)."""
        self._note_assignment(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    def _note_assignment(self, assigned: set[TP]) -> None:
        coordinator = self._coordinator()
        if coordinator is not None:
            if self._assigned_as not in (None, coordinator.member_id):
                self._dropped()
            self._assigned_as = coordinator.member_id if assigned else None

    def _still_member(self) -> bool:
        """False, after refusing commits and calling :attr:`on_dropped`, when the group
        coordinator dropped this consumer while it held partitions: aiokafka reset its
        generation (a heartbeat, a commit or a join was refused: its session or a rebalance
        timed out, e.g. while a batch held the event loop longer than that), or it rejoined
        as another member since its partitions were assigned. Its partitions
        are another worker's by now, which may have recovered their tables already: the
        changes pending here, made from this worker's older state, must never reach their
        changelogs, where they would land after the new owner's and replace them on the
        next recovery (``tests/integration/test_rebalance.py``: 1,040 co-counts lost). Its
        events since the last commit are delivered again to the new owner. The worker stops
        (its state is behind its tables' changelogs now) and recovers them when restarted.

        Not fenced (that takes transactions, which the embedded broker lacks): a drop the
        consumer has not heard of yet (no heartbeat answered since: at most
        ``broker_heartbeat_interval`` while the broker answers; a commit meanwhile does not
        write while the coordinator is unknown, :meth:`_commit_tps`), and table writes already
        in flight when the consumer was dropped, which may land after the new owner's."""
        if self.commits_refused is not None:
            return False
        coordinator = self._coordinator()
        if coordinator is None or not self.assignment() or (
                coordinator.generation != OffsetCommitRequest.DEFAULT_GENERATION_ID
                and self._assigned_as in (None, coordinator.member_id)):
            return True
        self._dropped()
        return False

    def _dropped(self) -> None:
        """Refuse commits for good and tell :attr:`on_dropped` (once)."""
        if self.commits_refused is not None:
            return
        dropped = DroppedByGroup(
            "the consumer group dropped this worker (its session or a rebalance timed out) "
            "while it held partitions: it writes and commits nothing more and stops; the "
            "events after its last commit go to the partitions' new owners")
        self.refuse_commits(dropped)
        if not self.app.should_stop:  # stopping, it may have left the group itself
            self.log.error("%s", dropped)
            if self.on_dropped is not None:
                self.on_dropped(dropped)

    def _coordinator_known(self) -> bool:
        """Whether aiokafka knows the group's coordinator now (it forgets it when a request
        to it fails: the broker is unreachable, or the coordinator moved)."""
        coordinator = self._coordinator()
        return coordinator is None or coordinator.coordinator_id is not None

    # Copied from faust-streaming 0.15.3 faust/transport/consumer.py, Consumer._commit_tps; the
    # change is the ``before_commit`` call, on every commit, even one with nothing to commit.
    async def _commit_tps(self, tps: Iterable[TP], start_new_transaction: bool) -> bool:
        """faust's ``_commit_tps``, awaiting :attr:`before_commit` between choosing the offsets
        and committing them. Why then: an offset is committable once its event is acked, and
        an agent acks an event once its state changes are in the worker's write buffer, not
        yet on the broker; what ``before_commit`` makes durable includes every change of every
        event acked before the offsets were chosen, so no committed offset runs ahead of its
        state. Changes of events acked meanwhile go out too (durable early: harmless, state
        updates are idempotent). A ``before_commit`` that raises fails the commit: nothing is
        committed, the events are delivered again. After :meth:`refuse_commits`, nothing is
        committed (False), ``before_commit`` not called; nor once the group dropped this
        consumer (:meth:`_still_member`), nor while the group's coordinator is unknown (cut off
        from the broker, a write begun now could land after the group handed the partitions
        on: False, the changes stay pending for the next commit)."""
        if (self.commits_refused is not None or not self._still_member()
                or not self._coordinator_known()):
            return False
        commit_offsets = self._filter_committable_offsets(tps)
        if self.before_commit is not None:
            await self.before_commit()
        if commit_offsets:
            try:
                # send all messages attached to the new offset
                await self._handle_attached(commit_offsets)
            except ProducerSendError as exc:
                await self.crash(exc)
            else:
                return await self._commit_offsets(
                    commit_offsets, start_new_transaction=start_new_transaction
                )
        return False

    # -- seeks ----------------------------------------------------------------------------------
    def _mark_seeking(self, positions: Mapping[TP, int]) -> None:
        """Mark ``positions``' partitions as moved by a seek (see the module doc)."""
        seek_id = next(self._seek_ids)
        for tp, position in positions.items():
            self._seeking[faust_consumer.ensure_TP(tp)] = (seek_id, position)

    async def perform_seek(self) -> None:
        """Seek every assigned partition to its committed offset (faust's ``perform_seek``);
        stream partitions without one go to their earliest offset when the app resets offsets
        to ``earliest``. Marks the partitions for the drain loop. Raises what the consumer
        thread raises (faust's recovery calls this under a timeout).

        Marks only once the offsets are known, together with the read offsets: a partition
        marked without a position to seek it back to would lose the records the loop skips.
        Records the loop delivers while the seek is under way are delivered again from the
        sought offset (state updates are idempotent), never dropped."""
        committed = await self.seek_to_committed()
        positions: dict[TP, int] = {
            tp: offset for tp, offset in committed.items() if offset is not None and offset > 0}
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            # aiokafka's seek_to_committed leaves a partition without a committed offset (None,
            # or 0) where its fetcher got to. Changelogs are recovery's to seek.
            unset = [tp for tp, offset in committed.items()
                     if (offset is None or offset <= 0) and not self._is_changelog_tp(tp)]
            if unset:
                earliest = await self.earliest_offsets(*unset)
                await self._seek_positions(earliest)
                positions.update(earliest)
        # The marks and faust's bookkeeping (as in stock perform_seek) in one step: no
        # delivery of a stale record can come between them.
        self._mark_seeking(positions)
        self._read_offset.update({
            tp: offset if offset is not None and offset >= 0 else None
            for tp, offset in committed.items()})
        self._committed_offset.update({
            faust_consumer.ensure_TP(tp): offset if offset else None
            for tp, offset in committed.items() if offset is not None})

    async def seek(self, partition: TP, offset: int) -> None:
        """faust's ``seek``, marking the partition for the drain loop (before the seek, so
        that nothing fetched meanwhile is delivered, and again after it)."""
        self._mark_seeking({partition: offset})
        await super().seek(partition, offset)
        self._mark_seeking({partition: offset})

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        """faust's ``seek_wait`` (recovery seeks changelogs with it), marking the partitions
        before the seek and again after it."""
        positions = {tp: max(offset, 0) for tp, offset in partitions.items()}
        self._mark_seeking(positions)
        await super().seek_wait(partitions)
        self._mark_seeking(positions)

    async def _finish_seeks(self) -> None:
        """Seek the marked partitions again to the offsets their seeks established (a fetch in
        flight during a seek may have moved them on), then clear the marks, except those a new
        seek replaced meanwhile. The drain loop calls this before it fetches."""
        marks = dict(self._seeking)
        assigned = self.assignment()
        positions = {tp: offset for tp, (_, offset) in marks.items() if tp in assigned}
        if positions:
            await self._seek_positions(positions)
        for tp, mark in marks.items():
            if self._seeking.get(tp) == mark:
                del self._seeking[tp]

    async def _seek_positions(self, positions: Mapping[TP, int]) -> None:
        """Move each partition's fetch position (in the consumer thread, as ``seek_wait``
        does), skipping partitions no longer assigned. Sets no read offset."""
        thread = self._thread

        async def seek_in_thread() -> None:
            consumer = thread._ensure_consumer()
            assigned = consumer.assignment()
            for tp, offset in positions.items():
                if tp in assigned:
                    consumer.seek(tp, offset)

        await thread.call_thread(seek_in_thread)

    async def _deliver(self, callback: ConsumerCallback, message: Message) -> None:
        """Deliver ``message`` through ``callback``; may block as stock faust's delivery does.

        Runs the callback's first step inline; if it suspends, hands the rest to the stock
        race against ``suspend_flow`` (and the consumer stopping or crashing). Exceptions of the
        callback propagate as they do from ``wait_first``. A message of one of
        :attr:`direct_topics` goes to its :class:`~streamer.app.batching.DirectQueue` instead,
        the callback not called (once an agent reads that queue); while flow control is
        suspended or faust's producer buffer is over its limit, it waits there in the same race
        (:meth:`~streamer.app.batching.DirectQueue.put_when_flowing`), as the conductor's
        callback waits for both.

        A delivery done inline does not yield to the event loop. The stock delivery does (its
        ``wait_first`` always does), which paced it to agents that take one event per loop
        iteration (faust's stream iterator sleeps 0 before each): a loop that delivered faster
        filled their queues and then blocked on every delivery. streamer's batch agents take
        what their queue holds at once (:mod:`streamer.app.batching`), so that pacing only cost
        a turn of the event loop per message. Without it, in three before/after runs
        (``benchmarks/throughput.py --only streamer --ref DIR``, medians of 5 interleaved
        repeats): 1.24x, 1.36x and 1.34x the events/s, 7-26 % less worker CPU per event
        (5,084 vs 6,304 events/s, 164 vs 122 us, ``--fresh-broker``; 5,674 vs 7,725, 146 vs
        116 us; 40,000 events: 5,295 vs 7,108, 176 vs 164 us). The same code against itself
        read 0.87x and 4 % apart: the gain is in the events/s more than in the CPU.

        The cost falls on agents that take one event at a time (the reward ledger's): they get
        a turn every 100 messages, when faust's loop yields, so in a burst their queue fills
        and deliveries to it block (the task race above) as they would in stock faust.
        ``benchmarks/faust_consumer.py`` (such an agent, a no-op): 1.79x stock's events/s and
        1.80x less CPU per event, with 15 % of the deliveries suspended (3 repeats; 2.3x both
        with the per-message yield, in an earlier session).
        """
        routes = self.direct_routes
        direct = routes.get(message.topic) if routes else None
        if direct is not None and direct.reader is not None:
            if not direct.put(message):  # flow suspended, or producer buffer full: wait
                self.suspended_deliveries += 1
                if self.on_suspended is not None:
                    self.on_suspended()
                await self.wait_first(direct.put_when_flowing(message), self.suspend_flow.wait())
            return
        coro: Any = callback(message)
        if type(coro) is types.CoroutineType:  # anything else takes the stock path as it is
            try:
                pending = coro.send(None)
            except StopIteration:
                return  # delivered without yielding: nothing could have raced it
            self.suspended_deliveries += 1
            if self.on_suspended is not None:
                self.on_suspended()
            coro = _Continuation(coro, pending)
        await self.wait_first(coro, self.suspend_flow.wait())

    async def _skip_batch(self, tp: TP, marker: Message) -> None:
        """Count the offsets of a record batch the fetch skipped (it could not be parsed:
        :mod:`streamer.app.fetched_records`) as done, and hand it to :attr:`on_skipped_batch`.
        ``marker`` is the fetch's marker record for it (its ``headers`` the
        :class:`~streamer.app.fetched_records.SkippedBatch`).

        Why here: the fetch moved past the batch already, so only the commit is left to move,
        and it is this consumer's. The offsets become a gap (as the drain loop's gaps between
        fetched records, a compacted topic's say): commits pass them once a later offset of
        the partition is acknowledged. A skipped batch last in its partition is therefore met
        again after a restart, and reported again (at least once, like every message). The
        marker arrives where the batch was, among the partition's records, so it is counted
        once, in order, by the consumer that read it.

        A table's changelog batch is delivered instead as a tombstone of
        :data:`~streamer.app.kafka.SKIPPED_KEY` at its last offset, a key no table holds, as a
        changelog record whose key does not decode is (:class:`~streamer.app.kafka.TableSchema`):
        recovery counts a partition's offsets by the records it applies, so without it a worker
        whose changelog partition ends with such a batch waited for its offsets for good."""
        skipped = cast(SkippedBatch, marker.headers)
        self.skipped_batches += 1
        # Once per batch in this process: a changelog's is met again by every recovery (a
        # memory store recovers from the start), and a global table's by every worker.
        reported = self.__dict__.setdefault("_reported_batches", set())
        batch_id = (skipped.topic, skipped.partition, skipped.first_offset)
        if self.on_skipped_batch is not None and batch_id not in reported:
            reported.add(batch_id)
            await self.on_skipped_batch(skipped)
        if tp.topic in self.app.tables.changelog_topics:
            marker.key, marker.headers = _SKIPPED_CHANGELOG_KEY, []
            await self._deliver(self.callback, marker)
        elif self.app.topics.acks_enabled_for(tp.topic):
            await self._add_gap(tp, skipped.first_offset, skipped.last_offset)

    # Copied from faust-streaming 0.15.3 faust/transport/consumer.py, Consumer._drain_messages;
    # the changes are ``await deliver(callback, message)`` where faust has
    # ``await self.wait_first(callback(message), self.suspend_flow.wait())``, the seek
    # marks (``seeking``): re-seek and clear them before a fetch, skip records of marked
    # partitions, never set the read offset of a marked partition (see the module doc), and
    # a skipped batch's marker (a null value, a SkippedBatch as its headers) counted and
    # reported (:meth:`_skip_batch`) instead of delivered.
    async def _drain_messages(self, fetcher: ServiceT) -> None:
        # This is the background thread started by Fetcher, used to
        # constantly read messages using Consumer.getmany.
        # It takes Fetcher as argument, because we must be able to
        # stop it using `await Fetcher.stop()`.
        callback = self.callback
        getmany = self.getmany
        deliver = self._deliver
        seeking = self._seeking
        skipped: Any = SkippedBatch  # compared with a message's headers (typed as headers)
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if seeking:
                    await self._finish_seeks()
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        if tp in seeking:  # fetched before a seek moved its partition
                            continue

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:  # noqa: SIM102 (verbatim)
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            if message.value is None and type(message.headers) is skipped:
                                await self._skip_batch(tp, message)
                            else:
                                await deliver(callback, message)
                            if tp not in seeking:  # a seek during the delivery set it
                                set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


def _fast_ebb(buffer: Any) -> Callable[[], bool]:
    """Give faust's producer ``buffer`` a ``wait_until_ebb`` that reads the
    ``producer_threaded`` setting once, not twice per message; returns the question it asks
    (whether the buffer holds more than its ``max_messages``), for
    :class:`~streamer.app.batching.DirectQueue`, which asks it without a coroutine.

    faust's conductor awaits the buffer's ``wait_until_ebb`` before it delivers each message
    (the buffer of ``send_soon`` messages, e.g. a stock table's changelog writes, must not
    grow without bound), and the buffer's ``size`` reads ``app.conf.producer_threaded``
    through faust's settings registry on each call: 1.6 us of the message's delivery (in
    process; the worker's tables send their changelogs themselves, so the buffer is empty).
    Here the same question is answered with the setting read once: above ``max_messages``
    faust's own method runs, as before (it logs and flushes). The conductor binds the method
    when it builds a partition's handler, after the consumer exists.
    """
    threaded = bool(buffer.app.conf.producer_threaded)

    def over() -> bool:
        queue = buffer.queue if threaded else buffer.pending
        return queue is not None and len(queue._queue) > buffer.max_messages

    if "wait_until_ebb" in vars(buffer):
        return over
    stock = buffer.wait_until_ebb

    async def wait_until_ebb() -> None:
        if over():
            await stock()

    buffer.wait_until_ebb = wait_until_ebb
    return over


def _source_sha256(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def check_supported() -> None:
    """Raise :class:`FastConsumerUnsupported` unless the installed faust is the one
    :class:`FastConsumer` copies: same drain loop source, not overridden on the way down to
    the aiokafka consumer, and the hooks it calls still there."""
    problems = []
    for name, expected in (("_drain_messages", DRAIN_MESSAGES_SHA256),
                           ("_commit_tps", COMMIT_TPS_SHA256)):
        try:
            digest = _source_sha256(getattr(faust_consumer.Consumer, name))
        except (OSError, TypeError, AttributeError) as e:  # no source: cannot compare, refuse
            problems.append(f"cannot read faust's {name} source ({e})")
        else:
            if digest != expected:
                problems.append(f"faust.transport.consumer.Consumer.{name} changed "
                                f"(sha256 {digest[:12]}..., expected {expected[:12]}...)")
        if getattr(faust_aiokafka.Consumer, name) is not getattr(faust_consumer.Consumer, name):
            problems.append(f"faust's aiokafka Consumer overrides {name}")
    for name, expected in (("wait_until_ebb", WAIT_UNTIL_EBB_SHA256),
                           ("size", PRODUCER_BUFFER_SIZE_SHA256)):
        function = getattr(ProducerBuffer, name)
        name = f"ProducerBuffer.{name}"
        try:
            digest = _source_sha256(getattr(function, "fget", function))
        except (OSError, TypeError) as e:
            problems.append(f"cannot read faust's {name} source ({e})")
        else:
            if digest != expected:
                problems.append(f"faust's {name} changed (sha256 {digest[:12]}..., expected "
                                f"{expected[:12]}...)")
    for name in ("wait_first", "getmany", "_add_gap", "commit", "sleep"):
        if not callable(getattr(faust_aiokafka.Consumer, name, None)):
            problems.append(f"faust's aiokafka Consumer has no {name}()")
    if not hasattr(faust_consumer, "CONSUMER_FETCHING"):
        problems.append("faust.transport.consumer.CONSUMER_FETCHING is gone")
    if problems:
        raise FastConsumerUnsupported(
            f"streamer's FastConsumer was written against faust-streaming {FAUST_VERSION} "
            f"(installed: {faust.__version__}): " + "; ".join(problems)
            + ". Re-check streamer/app/fast_consumer.py against the new faust, or leave it out.")


def install_fast_consumer(app: faust.App, *, end_offsets_check: Callable[
        [dict[TP, int]], Awaitable[dict[TP, int]]] | None = None,
        fetch_max_wait_ms: int | None = None,
        before_commit: Callable[[], Awaitable[Any]] | None = None,
        on_suspended: Callable[[], Any] | None = None,
        on_dropped: Callable[[BaseException], Any] | None = None,
        on_skipped_batch: Callable[[SkippedBatch], Awaitable[Any]] | None = None,
        count_commits: bool = True, direct_topics: Iterable[str] = ()) -> None:
    """Make ``app`` consume with :class:`FastConsumer`; call before the worker starts.
    ``before_commit`` is awaited by every commit before it commits
    (:meth:`FastConsumer._commit_tps`); ``on_suspended`` is called for every delivery that
    had to wait (:attr:`FastConsumer.on_suspended`); ``on_dropped`` is called when the group
    dropped the consumer (:attr:`FastConsumer.on_dropped`); ``on_skipped_batch`` is awaited
    with each record batch the fetch skipped (:meth:`FastConsumer._skip_batch`);
    ``count_commits=False``: commits on
    faust's interval only (:attr:`FastConsumer.count_commits`); ``direct_topics``: topics whose
    messages go straight to the one agent reading each (:attr:`FastConsumer.direct_topics`).

    Sets the consumer class on this app's transport only (other apps keep faust's). Idempotent.
    Raises :class:`FastConsumerUnsupported` when faust's internals differ from the release the
    consumer was written against, when the app's transport is not faust's aiokafka transport
    (``kafka://`` brokers), or when the app already created its consumer.
    """
    check_supported()
    transport = app.transport  # created on first access; it resolves its event loop lazily
    if isinstance(transport.Consumer, type) and issubclass(transport.Consumer, FastConsumer):
        return
    if transport.Consumer is not faust_aiokafka.Consumer:
        raise FastConsumerUnsupported(
            f"the app's transport consumes with {transport.Consumer!r}, not faust's aiokafka "
            "Consumer that FastConsumer extends")
    if app._consumer is not None:
        raise FastConsumerUnsupported("the app already created its consumer: install the fast "
                                      "consumer before the worker starts")
    consumer: type[FastConsumer] = FastConsumer
    hooks = {"end_offsets_check": end_offsets_check, "before_commit": before_commit,
             "on_suspended": on_suspended, "on_dropped": on_dropped,
             "on_skipped_batch": on_skipped_batch}
    direct = frozenset(direct_topics)
    if (fetch_max_wait_ms is not None or not count_commits or direct
            or any(h is not None for h in hooks.values())):
        # Functions as class attributes: staticmethod, or they would bind as methods.
        attrs: dict[str, Any] = {name: staticmethod(h) if h is not None else None
                                 for name, h in hooks.items()}
        attrs["fetch_max_wait_ms"] = fetch_max_wait_ms
        attrs["count_commits"] = count_commits
        attrs["direct_topics"] = direct
        consumer = type("FastConsumer", (FastConsumer,), attrs)
    # An instance attribute (faust declares a ClassVar): this app's transport only.
    transport.Consumer = consumer  # type: ignore[misc]
