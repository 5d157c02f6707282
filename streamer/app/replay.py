"""``streamer replay``: produce historical events to ``clicks`` / ``purchases``.

Events go out in event-time order (the readers sort them), keyed by session id like a live
storefront's, with their original timestamps as Kafka timestamps, at ``speed`` x real time or
as fast as possible. Sends are pipelined (bounded in flight) and every delivery is confirmed
before the summary is printed; a failed send is counted and reported, never ignored. The
summary counts acknowledged events only, and when some were not acknowledged it names the
first of them (its position and event time), from which a replay resumes without a gap (later
events that did get through are sent again and de-duplicated downstream by ``event_id``). A
Before the first send, ``clicks`` and ``purchases`` are checked and created as the worker
would (:func:`prepare_topics`), so a replay before any worker does not leave them to the
broker's auto-create (its default partition count, which the worker then refuses), and
history is not deleted as it lands (the broker deletes by record time: the events' own). A
send the producer refuses (``KafkaError``: the broker unreachable past the request timeout)
ends the replay there, with its summary. So does a cancellation (Ctrl-C: ``asyncio.run``
cancels its task): the acknowledgements in flight are awaited for at most
:data:`INTERRUPT_WAIT_S`, and the summary says where to resume, marked ``interrupted``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streamer.app.broker import create_missing
from streamer.app.kafka import admin_client, aiokafka_kwargs, start_client
from streamer.app.topics import TopicNeeds, config_command, describe, reconcile
from streamer.events import Event, PurchaseEvent
from streamer.replay.pacing import ReplayPacer
from streamer.settings import Settings

MAX_IN_FLIGHT = 5_000
#: How long an interrupted replay waits for the acknowledgements of what it sent: each one
#: waited for is an event the resumed replay need not send again; a user who pressed Ctrl-C
#: is not kept waiting long (a second Ctrl-C stops at once).
INTERRUPT_WAIT_S = 5.0


#: What a replay creates ``clicks`` and ``purchases`` with, besides the configured partitions:
#: records kept whatever their time. Kafka deletes a record once its timestamp, the event's
#: original time, is older than ``retention.ms`` (7 days by default): years-old history would
#: go within minutes of landing, before a worker read it.
KEEP_HISTORY: dict[str, str] = {"retention.ms": "-1"}
#: Apache Kafka's default retention, to suggest for a topic created with KEEP_HISTORY.
WEEK: dict[str, str] = {"retention.ms": str(7 * 86_400_000)}


async def prepare_topics(settings: Settings, oldest_ts: int) -> list[str]:
    """Check ``clicks`` and ``purchases`` as the worker does (a partition count other than
    ``topics.partitions`` raises :class:`~streamer.app.topics.TopicSetupError` before anything
    is created or sent), create the missing ones with the configured partitions and
    :data:`KEEP_HISTORY`, and return a note per topic created so (kept forever: the command
    to give it a retention later), and a warning, with the command that fixes it, per existing
    topic whose retention would delete events as old as ``oldest_ts`` (epoch ms). Existing
    topics' configs are not changed: keeping a live topic forever is the operator's call."""
    from streamer.app.worker import topic_needs

    t = settings.topics
    needs = [n for n in topic_needs(settings) if n.name in (t.clicks, t.purchases)]
    async with admin_client(settings.kafka) as (admin, bootstrap):
        existing = set(await admin.list_topics())
        created = [n.name for n in needs if n.name not in existing]
        await reconcile(admin, needs, existing, bootstrap=bootstrap)
        await create_missing(admin, [n.name for n in needs], existing,
                             partitions=t.partitions,
                             replication_factor=t.replication_factor,
                             configs=dict.fromkeys((n.name for n in needs), KEEP_HISTORY))
        described = await describe(
            admin, [TopicNeeds(n.name, configs=KEEP_HISTORY) for n in needs], existing)
    age_ms = int(time.time() * 1000) - oldest_ts
    warnings = [
        f"created {name} ({t.partitions} partitions) with retention.ms=-1: replayed history "
        "is kept forever, where the broker's default retention would delete it by its own "
        "old timestamps; if the storefront's live events will use this topic too, give it "
        f"a retention once the replay is consumed: `{config_command(bootstrap, name, WEEK)}`"
        for name in created]
    for topic in described.values():
        retention = int((topic.configs or {}).get("retention.ms", "-1"))
        if 0 <= retention < age_ms:
            warnings.append(
                f"{topic.name} keeps records {retention / 86_400_000:g} days (retention.ms), "
                f"and the oldest events replayed are {age_ms / 86_400_000:,.0f} days old: the "
                f"broker deletes them within minutes of landing. Give it a retention longer "
                f"than that first (`{config_command(bootstrap, topic.name, KEEP_HISTORY)}` "
                "keeps its records forever), or replay into topics of their own "
                "(STREAMER__TOPICS__CLICKS, STREAMER__TOPICS__PURCHASES)")
    return warnings


@dataclass
class ReplaySummary:
    """What a replay sent: ``sent`` counts acknowledged events per topic; ``undelivered``
    is the position (0-based, among the events given) of the first event not acknowledged,
    failed or never sent, and ``undelivered_ts`` its event time (None: all got through)."""

    sent: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None
    undelivered: int | None = None
    undelivered_ts: int | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(self.sent.values())

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        per_topic = ", ".join(f"{t}: {n:,}" for t, n in sorted(self.sent.items()))
        first = f" (first: {self.first_error})" if self.first_error else ""
        text = (f"{'interrupted: ' if self.interrupted else ''}{self.events:,} events in "
                f"{self.seconds:.1f} s ({self.rate:,.0f}/s)"
                f"{': ' + per_topic if per_topic else ''}\nerrors: {self.errors}{first}")
        if self.undelivered is not None:
            text += (f"\nnot delivered from event #{self.undelivered + 1:,} on "
                     f"(event time {self.undelivered_ts})")
        return "\n".join([*self.warnings, text])

    def _undelivered(self, position: int, ts: int) -> None:
        if self.undelivered is None or position < self.undelivered:
            self.undelivered, self.undelivered_ts = position, ts


async def replay_events(
    settings: Settings,
    events: Iterable[Event],
    *,
    speed: float | None,
    on_sent: Callable[[Event], None] | None = None,
) -> ReplaySummary:
    """Produce ``events`` (already in event-time order) and wait for every acknowledgement;
    the topics are prepared first (:func:`prepare_topics`, whose warnings the summary
    repeats)."""
    t = settings.topics
    summary = ReplaySummary()
    stream = iter(events)
    first = next(stream, None)
    if first is None:
        return summary
    stream = itertools.chain([first], stream)
    summary.warnings = await prepare_topics(settings, first.ts)
    pacer = ReplayPacer(speed)
    encode = msgspec.json.Encoder().encode
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings.kafka), linger_ms=20,
                                max_batch_size=256 * 1024)
    await start_client(producer)
    # Each delivery's future -> (position, topic, event time), to count it once acknowledged.
    pending: dict[asyncio.Future[object], tuple[int, str, int]] = {}

    def failed(position: int, ts: int, error: BaseException) -> None:
        summary.errors += 1
        summary.first_error = summary.first_error or repr(error)
        summary._undelivered(position, ts)

    def settle(done: Iterable[asyncio.Future[object]]) -> None:
        for f in done:
            position, topic, ts = pending.pop(f)
            error = f.exception()
            if error is not None:
                failed(position, ts, error)
            else:
                summary.sent[topic] = summary.sent.get(topic, 0) + 1

    start = time.monotonic()
    sent = 0  # events taken from the stream and handed to the producer
    in_hand: Event | None = None  # taken, not handed over yet
    try:
        for position, event in enumerate(stream):
            in_hand = event
            delay = pacer.delay_s(event_ts_ms=event.ts, elapsed_s=time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)  # pacing history at the requested speed
            topic = t.purchases if isinstance(event, PurchaseEvent) else t.clicks
            try:
                fut = await producer.send(topic, encode(event), key=event.session_id.encode(),
                                          timestamp_ms=event.ts)
            except KafkaError as e:  # nothing later can go out in order: stop here
                failed(position, event.ts, e)
                break
            pending[fut] = (position, topic, event.ts)
            in_hand, sent = None, position + 1
            summary.first_ts = summary.first_ts if summary.first_ts is not None else event.ts
            summary.last_ts = event.ts
            if on_sent is not None:
                on_sent(event)
            if len(pending) >= MAX_IN_FLIGHT:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                settle(done)
        if pending:
            done, _ = await asyncio.wait(pending)
            settle(done)
    except asyncio.CancelledError:
        # Interrupted (Ctrl-C): the summary, not the cancellation, is the result. What is
        # acknowledged within the wait counts; the replay resumes from the first event that
        # is not (in flight still, or never sent).
        summary.interrupted = True
        unsent = in_hand if in_hand is not None else next(stream, None)
        if unsent is not None:
            summary._undelivered(sent, unsent.ts)
        if pending:
            done, _ = await asyncio.wait(pending, timeout=INTERRUPT_WAIT_S)
            settle(done)
            for position, _topic, ts in pending.values():
                summary._undelivered(position, ts)
    finally:
        await producer.stop()
    summary.seconds = time.monotonic() - start
    return summary
