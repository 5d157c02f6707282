"""The faust side of live reward tracking: tables, internal topics, thin agents, timers, pages.

Topology (partition counts all equal ``topics.partitions``, so faust co-assigns partition *p*
of every topic to one worker)::

    clicks, purchases ─(clicks / purchases agents: RewardTracker.observe)─┐
    <app>-reward-ticks ─(reward-ticks agent: RewardTracker.tick)──────────┤
                         closed impressions ─► feedback (key offer_id)    │
                                           └─► <app>-reward-outcomes (key policy_version)
    <app>-reward-outcomes ─(reward-ledger agent: RewardTracker.record)─► rewards (key version)
    offers ─(OfferIndexFeed, no group)─► OfferIndex        rewards ─(reader)─► RewardBoard
                                                          ─► dashboard, gauges, guardrails
    <app>-decisions ─(OfferIndexFeed, no group)─► DecisionLog ─► feedback records' decision

The decision ledger. The items agent (factory) logs the decision of every offer it publishes
(``streamer.engine.OfferDecision``: the rows the policy scored, as it scored them) to the
internal topic ``<app>-decisions`` (key offer_id), sent with the offer and, like it, durable
before the offsets that produced it are committed. Whoever closes an impression of the offer
puts its decision into the feedback record. Why a topic read by every worker, not a table:
the decision is made on the worker owning the *anchor's* partition, the impression closes on
the one owning the *session's*, usually another (the offers' own reason for
:mod:`streamer.app.offer_index`); a partitioned table is local to its owner, and a global
table would be a second copy of this log, written from one agent, deleted from none. Why not
in the offer: the ``offers`` contract is the storefront's and the rows are ~5x its size. Not
compacted: every key (offer_id) is written once, so compaction frees nothing; the topic's
retention is time, ``offers.ttl_s`` plus twice the attribution window and lateness, so a
restarted worker reads back every decision an open impression can still need, and nothing
older. In memory each worker keeps the ``DecisionLog`` bound: a decision until its offer
expired or was replaced, plus twice (attribution window + lateness), at most
``worker.decision_log_capacity``, held as read from the topic (MessagePack, ~2.8 KB each
against ~3.8 KB as JSON and ~9 KB held decoded; ~12 rows, measured on
``benchmarks/throughput.py``'s purchases): the feed decodes only each message's header, and a
decision is decoded (~5 us) when an impression of its offer closes.

The timer sends a tick to each ticks partition this worker owns (tables may only be written
while an event of the key's partition is processed, so the timer cannot close windows itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
import msgspec

from streamer.app.crashes import AgentBody
from streamer.app.kafka import WireSchema
from streamer.app.offer_index import OfferIndex, OfferIndexFeed
from streamer.app.reward_board import RewardBoard, read_reward_windows, window_label
from streamer.app.reward_tracking import (
    FeedbackRecord,
    RewardConfig,
    RewardTracker,
    Tick,
)
from streamer.app.tables import WriteBuffer
from streamer.engine import DecisionLog, OfferDecision
from streamer.events import BundleOffer, InvalidEvent, RewardWindow, internal_decoder
from streamer.events.dedup import SeenId
from streamer.observability import Metrics
from streamer.rewards import ImpressionOutcome, SessionState, WindowAggregate, WindowSpec
from streamer.rewards.attribution import check_outcome
from streamer.settings import Settings

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_outcome = internal_decoder(ImpressionOutcome)
_decode_tick = internal_decoder(Tick)


class EncodedDecisions:
    """The feed's view of a :class:`DecisionLog`: it adds each message as it came
    (:data:`streamer.engine.encode_decision`'s MessagePack, or an earlier worker's JSON),
    decoding only its header (``InvalidEvent`` when it is not a logged decision, whatever
    the reason: the feed counts and skips those, and anything else it raises restarts it from
    its lookback, where it would meet the message again), with the wall clock: the log skips
    and counts a decision stamped too far ahead of it (``DecisionLog.ahead``), and the first
    is logged here."""

    __slots__ = ("log",)

    def __init__(self, log: DecisionLog) -> None:
        self.log = log

    def add(self, value: bytes, /) -> None:
        ahead = self.log.ahead
        self.log.add_encoded(value, wall_ms=int(time.time() * 1000))
        if ahead == 0 and self.log.ahead == 1:
            log.warning("a decision stamped more than %d s ahead of this worker's clock was "
                        "skipped; later ones are only counted",
                        (self.log.max_ahead_ms or 0) // 1000)


def reward_config(settings: Settings) -> RewardConfig:
    """Map the ``rewards`` settings onto the tracker's plain values."""
    r = settings.rewards
    return RewardConfig(
        window_ms=int(r.attribution_window_s * 1000),
        allowed_lateness_ms=int(r.allowed_lateness_s * 1000),
        specs=tuple(WindowSpec(size, step) for size, step in r.window_specs_ms()),
        ledger_lateness_ms=int(r.ledger_lateness_s * 1000),
        max_ahead_ms=int(r.max_event_ahead_s * 1000),
        by_anchor=r.by_anchor,
        by_segment=r.by_segment,
        reward=r.reward,
        cost_ratio=r.cost_ratio,
        dedup_capacity=settings.worker.dedup_capacity,
    )


#: How long attribution waits at start for the offer index to catch up with the offers topic
#: before it goes on without (a warning): a broker that cannot serve ``offers`` must not stop
#: the worker for good.
OFFERS_READY_TIMEOUT_S = 30.0


@dataclass
class RewardTracking:
    """What the clicks and purchases agents, pages and the demo need from reward tracking."""

    tracker: RewardTracker
    offers: OfferIndex
    board: RewardBoard
    publish_outcomes: Callable[[list[ImpressionOutcome]], Any]
    #: Set once the offer index holds the offers published before this worker started
    #: (:attr:`streamer.app.offer_index.OfferIndexFeed.caught_up`), and the decision log their
    #: decisions, or the wait timed out.
    offers_ready: asyncio.Event
    #: Logged decisions of offers by offer_id, read from ``decisions_topic`` (module doc).
    decisions: DecisionLog
    #: The internal topic the items agent logs its offers' decisions to.
    decisions_topic: Any

    async def wait_offers(self) -> None:
        """Return once :attr:`offers_ready`: the agents call it before they attribute, so a
        restarted worker does not close impressions of offers it has not read yet (see
        :mod:`streamer.app.offer_index`). Immediate after the first time."""
        if not self.offers_ready.is_set():
            await self.offers_ready.wait()


def install_reward_tracking(
    app: faust.App, settings: Settings, metrics: Metrics, table: Callable[..., Any],
    buffer: WriteBuffer,
    on_outcome: Callable[[ImpressionOutcome, BundleOffer | None, OfferDecision | None],
                         None] | None = None,
    dead_letter: Callable[[Any, InvalidEvent], Awaitable[None]] | None = None,
    guard: Callable[[str], Callable[[AgentBody], AgentBody]] | None = None,
    after_tick: Callable[[int, int | None], Awaitable[list[Any]]] | None = None,
) -> RewardTracking:
    """Add reward tracking's tables, topics, agents and timers to ``app``.

    ``table(name, help=...)`` makes a bytes-valued faust Table (the factory's helper); the
    tracker writes through ``buffer``, the worker's write-back, which every offset commit
    writes before it commits. ``on_outcome(outcome, offer, decision)`` is called for
    every closed impression, with the offer's logged decision when known (the worker's
    conversion model learns there). ``dead_letter(message, error)`` takes a message of an
    internal topic that does not decode (without it, the error is raised). ``guard(name)``
    decorates each agent's body (the worker's :meth:`~streamer.app.crashes.AgentCrashes.guard`:
    a crash stops the worker; without it, faust restarts the agent). ``after_tick(partition,
    event_ms)`` runs after each tick of a partition, with its event time
    (:meth:`RewardTracker.event_time`; None: unknown yet), and returns the futures of the
    messages it sent, which the next offset commit waits for (the worker's price sweep:
    :mod:`streamer.app.price_sweep`). The clicks and
    purchases agents call ``tracking.tracker.observe`` and ``tracking.publish_outcomes`` (which
    returns once the broker has the outcomes), holding ``buffer`` from the observation that
    closed impressions until then (:meth:`WriteBuffer.holding`); everything else runs here.
    """
    t, r, w = settings.topics, settings.rewards, settings.worker
    # The ledgers' clocks and closed windows' deletions trail their windows by write-backs
    # (tracker.flushed after each flush): what a crash leaves of the three tables' changelogs
    # then always holds together (streamer.rewards.ledger).
    config = dataclasses.replace(reward_config(settings), keep_closed=True)
    feedback_topic = app.topic(t.feedback, schema=WireSchema())
    rewards_topic = app.topic(t.rewards, schema=WireSchema())
    ticks_topic = app.topic(f"{w.app_id}-reward-ticks", internal=True,
                            partitions=t.partitions, schema=WireSchema())
    outcomes_topic = app.topic(f"{w.app_id}-reward-outcomes", internal=True,
                               partitions=t.partitions, schema=WireSchema())

    retention_ms = config.window_ms + config.allowed_lateness_ms
    offers = OfferIndex(retention_ms=retention_ms)
    # Twice the window: the log's clock is the newest decision of any partition, and one
    # partition's attribution may lag the others (DecisionLog).
    # Offers and decisions stamped further ahead of the wall clock than the events a worker
    # accepts are refused: either index's clock is the newest ts it holds (OfferIndexFeed).
    max_ahead_ms = round(w.max_event_ahead_s * 1000)
    decisions = DecisionLog(retention_ms=2 * retention_ms, capacity=w.decision_log_capacity,
                            max_ahead_ms=max_ahead_ms)
    decisions_lookback_ms = int(settings.offers.ttl_s * 1000) + 2 * retention_ms
    decisions_topic = app.topic(f"{w.app_id}-decisions", internal=True,
                                partitions=t.partitions, deleting=True,
                                retention=decisions_lookback_ms / 1000.0,
                                schema=WireSchema())
    tracker = RewardTracker(
        buffer.table(table("reward-sessions", help="Attribution state per session."),
                     SessionState),
        buffer.table(table("reward-windows", help="Open reward windows."), WindowAggregate),
        buffer.table(table("reward-clocks", help="Event clocks of attribution and ledgers."),
                     int),
        buffer.table(table("reward-seen-outcomes", help="De-duplication of outcomes."),
                     SeenId),
        offers=offers.get, config=config, metrics=metrics)
    board = RewardBoard.from_settings(r)

    buffer.after_flush.append(tracker.flushed)

    # Both publish functions return once the broker has every message: the state change that
    # produced them (a closed impression, a closed window) is held back until then
    # (WriteBuffer.holding), so a crash can repeat a message, never lose one.
    async def publish_outcomes(outcomes: list[ImpressionOutcome]) -> None:
        sent = []
        for outcome in outcomes:
            offer = offers.get(outcome.offer_id)
            record = FeedbackRecord.build(outcome, offer, decisions.get(outcome.offer_id))
            if on_outcome is not None:
                on_outcome(outcome, offer, record.decision)
            sent.append(await feedback_topic.send(key=outcome.offer_id, value=_encode(record)))
            metrics.feedback_records.inc()
            if offer is not None:  # without its offer, neither is possible
                source = "rebuilt" if record.decision is None else "logged"
                metrics.feedback_decisions.labels("worker", source).inc()
            # Unversioned outcomes (offer never found) have no ledger to go to: counted here.
            if outcome.policy_version is None:
                metrics.unversioned_outcomes.inc()
                continue
            sent.append(await outcomes_topic.send(key=outcome.policy_version,
                                                  value=_encode(outcome)))
        if sent:
            await asyncio.gather(*sent)

    async def publish_windows(windows: list[RewardWindow]) -> None:
        sent = [await rewards_topic.send(key=window.policy_version, value=_encode(window))
                for window in windows]
        if sent:
            await asyncio.gather(*sent)

    def guarded(name: str) -> Callable[[AgentBody], AgentBody]:
        return guard(name) if guard is not None else lambda body: body

    async def rejected(event: Any, error: InvalidEvent) -> None:
        # Internal topics, written by workers only; a message of another format (a stray
        # producer, a worker of another version) is dead-lettered, not raised: a raise
        # crashes the agent, and so stops the worker (streamer.app.crashes), which would then
        # meet the message again after every restart.
        if dead_letter is None:
            raise error
        await dead_letter(event.message, error)

    @app.agent(ticks_topic, name="reward-ticks")
    @guarded("reward-ticks")
    async def reward_ticks(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                tick = _decode_tick(event.value)
            except InvalidEvent as e:
                await rejected(event, e)
                continue
            if not offers_ready.is_set():  # a tick may close impressions (see wait_offers)
                await offers_ready.wait()
            with buffer.holding() as hold:
                buffer.partition = event.message.partition
                # This process's time besides the tick's stamp: a tick redelivered after a
                # restart was stamped before the crash (RewardTracker.tick).
                partition, now_ms = event.message.partition, int(time.time() * 1000)
                outcomes, windows = tracker.tick(partition, wall_ms=tick.wall_ms, now_ms=now_ms)
                if outcomes or windows:
                    hold.hold()
                await publish_outcomes(outcomes)
                await publish_windows(windows)
            sent = [] if after_tick is None else await after_tick(
                partition, tracker.event_time(partition, wall_ms=tick.wall_ms, now_ms=now_ms))
            buffer.defer(*sent)  # durable before the next offset commit

    @app.agent(outcomes_topic, name="reward-ledger")
    @guarded("reward-ledger")
    async def reward_ledger(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            wall_ms = int(time.time() * 1000)
            try:
                outcome = _decode_outcome(event.value)
                # Its times are those of events the worker accepted: no further ahead.
                check_outcome(outcome, now_ms=wall_ms, max_ahead_ms=max_ahead_ms)
            except InvalidEvent as e:
                await rejected(event, e)
                continue
            with buffer.holding() as hold:
                buffer.partition = event.message.partition
                windows = tracker.record(outcome, partition=event.message.partition,
                                         wall_ms=wall_ms, offset=event.message.offset)
                if windows:
                    hold.hold()
                await publish_windows(windows)
            buffer.defer()  # durable before the next offset commit

    @app.timer(r.tick_interval_s)
    async def send_ticks() -> None:
        tick = _encode(Tick(wall_ms=int(time.time() * 1000)))
        name = ticks_topic.get_topic_name()
        for tp in app.consumer.assignment():
            if tp.topic == name:
                await ticks_topic.send(value=tick, partition=tp.partition)
        update_lag(app, metrics)
        sessions, windows = tracker.open_state()
        metrics.open_sessions.set(sessions)
        metrics.open_windows.set(windows)

    offers_ready = asyncio.Event()

    @app.task
    async def index_offers() -> None:
        feed = OfferIndexFeed(settings.kafka, t.offers, offers,
                              lookback_ms=int(settings.offers.ttl_s * 1000) + retention_ms,
                              on_change=lambda: metrics.offer_index_size.set(len(offers)),
                              max_ahead_ms=max_ahead_ms)

        await decisions_topic.maybe_declare()
        decision_feed = OfferIndexFeed(settings.kafka, decisions_topic.get_topic_name(),
                                       EncodedDecisions(decisions),
                                       lookback_ms=decisions_lookback_ms, decode=bytes)

        async def signal_ready() -> None:
            try:
                await asyncio.wait_for(
                    asyncio.gather(feed.caught_up.wait(), decision_feed.caught_up.wait()),
                    OFFERS_READY_TIMEOUT_S)
            except TimeoutError:
                log.warning("offer index or decision log not caught up with %s after %.0f s: "
                            "attributing without it", t.offers, OFFERS_READY_TIMEOUT_S)
            offers_ready.set()

        ready = asyncio.ensure_future(signal_ready())
        try:
            await asyncio.gather(feed.run(), decision_feed.run())
        finally:
            ready.cancel()

    alarming = {"srm": False, "reward_regression": False}

    def on_windows(windows: list[RewardWindow]) -> None:
        board.add_all(windows)
        for window in windows:
            if window.anchor_item_id is None and window.segment is None:
                labels = (window.policy_version, window_label(window))
                latest = board.latest(window.policy_version, window.window_end -
                                      window.window_start)
                if latest is window:
                    metrics.reward_rate.labels(*labels).set(window.reward_rate)
                    metrics.reward_rate_lower.labels(*labels).set(window.ci95[0])
                    metrics.reward_rate_upper.labels(*labels).set(window.ci95[1])
        guard = board.guardrails()
        metrics.srm_p_value.set(guard.srm.p_value if guard.srm is not None else 1.0)
        for name, alarm in (("srm", guard.srm_alarm),
                            ("reward_regression", guard.regression_alarm)):
            metrics.guardrail_alarm.labels(name).set(1 if alarm else 0)
            if alarm and not alarming[name]:
                metrics.guardrail_alarms.labels(name).inc()
                log.warning("guardrail %s alarms: %s", name, guard)
            alarming[name] = alarm

    @app.task
    async def follow_rewards() -> None:
        # Every worker reads all rewards: a version's windows may come from another worker.
        while True:
            try:
                await read_reward_windows(settings.kafka, t.rewards, follow=True,
                                          on_batch=on_windows, lookback_ms=86_400_000,
                                          on_invalid=board.skip)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup must not stop the worker's dashboard for good
                log.exception("reading %s failed; retrying", t.rewards)
                await asyncio.sleep(2.0)  # back-off before reconnecting

    return RewardTracking(tracker, offers, board, publish_outcomes, offers_ready, decisions,
                          decisions_topic)


def update_lag(app: faust.App, metrics: Metrics) -> None:
    """Set ``streamer_consumer_lag`` per topic: end offset minus what was read, summed over
    this worker's partitions (partitions not read yet count from their committed offset)."""
    consumer = app.consumer
    monitor = app.monitor
    lag: dict[str, int] = {}
    for tp in consumer.assignment():
        try:
            end = consumer.highwater(tp)
        except Exception:  # not fetched yet: unknown, not zero
            continue
        if end is None:
            continue
        read = monitor.tp_read_offsets.get(tp)
        done = read + 1 if read is not None else monitor.tp_committed_offsets.get(tp)
        if done is None:
            continue
        lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end - done)
    for topic, n in lag.items():
        metrics.consumer_lag.labels(topic).set(n)
