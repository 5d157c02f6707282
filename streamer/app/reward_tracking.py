"""Live reward tracking in the worker: per-partition attribution and reward ledgers.

Plain Python (no faust here; the agents in :mod:`streamer.app.rewards_agents` call it):

- Clicks and purchases are keyed by ``session_id`` with the same partition count, so faust
  assigns partition *p* of both topics to the same worker. :class:`RewardTracker` keeps one
  :class:`~streamer.rewards.Attributor` per partition, whose sessions and event clock live in
  tables under keys prefixed ``"<p>|"``: faust writes a key's changelog to the partition of the
  event being processed, so every key is only ever written while an event of its own
  partition is handled, and a partition's state moves with it on rebalance.
- Closed :class:`~streamer.rewards.ImpressionOutcome` records are repartitioned by policy
  version (an internal topic) to one :class:`~streamer.rewards.RewardLedger` per partition, so
  a version's windows are complete on one worker, and published once.
- Event time: each attributor's and ledger's clock (changelog-backed, recovered with the
  state) moves with the events it sees. A partition with no traffic would never close its
  windows, so a timer sends ticks; a tick moves the clock to :class:`EventClock`'s estimate,
  ``newest event time + wall time since it was seen``: event time is assumed to pass at wall
  speed while a partition is idle. Replays at any speed keep their own event time while
  events flow (the estimate never exceeds what an idle gap justifies).
- Restarts: a partition's clocks are rebuilt from the tables when this process first handles
  a message of it (after a start or a rebalance), and the recovered time counts as seen at
  that moment of *this process's* wall time, not at the time the message carries. That
  message may be a tick redelivered from before the crash (its offset was not committed):
  counted from its stamp, the next fresh tick would pass the whole downtime as idle event
  time and close open impressions before the purchases waiting in the backlog are read,
  which then come too late. So the downtime is not idle time: event time resumes where it
  stopped, and the backlog moves it. A tick's stamp is also capped at this process's wall
  time, so a tick older than the rebuild advances nothing, and one from a timer whose clock
  runs ahead does not push event time past this process's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from msgspec import Struct
from prometheus_client import Counter

from streamer.engine import OfferDecision
from streamer.events import BundleOffer, ClickEvent, PurchaseEvent, RewardWindow
from streamer.events.dedup import Deduplicator, SeenId
from streamer.observability import Metrics
from streamer.rewards import (
    Attributor,
    ImpressionOutcome,
    OfferLookup,
    RewardKind,
    RewardLedger,
    SessionState,
    WindowAggregate,
    WindowSpec,
)

V = TypeVar("V")


class KeyPrefixView(MutableMapping[str, V], Generic[V]):
    """The keys of ``raw`` that start with ``prefix``, with the prefix stripped.

    Lets several owners (one per partition) share one table without seeing each other's keys.
    Iteration scans ``raw``; callers iterate only when rebuilding an index or closing windows.

    >>> raw = {"0|a": 1, "1|a": 2}
    >>> view = KeyPrefixView(raw, "1|")
    >>> dict(view), view.get("a"), "b" in view
    ({'a': 2}, 2, False)
    >>> view["b"] = 3; del view["a"]; sorted(raw)
    ['0|a', '1|b']
    """

    __slots__ = ("_prefix", "_raw")

    def __init__(self, raw: MutableMapping[str, V], prefix: str) -> None:
        self._raw = raw
        self._prefix = prefix

    def __getitem__(self, key: str) -> V:
        return self._raw[self._prefix + key]

    def get(self, key: str, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._raw.get(self._prefix + key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._prefix + key in self._raw

    def __setitem__(self, key: str, value: V) -> None:
        self._raw[self._prefix + key] = value

    def __delitem__(self, key: str) -> None:
        del self._raw[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        n = len(self._prefix)
        for key in list(self._raw):
            if key.startswith(self._prefix):
                yield key[n:]

    def __len__(self) -> int:
        return sum(1 for _ in self)


class EventClock:
    """Estimates event time on an idle partition: newest event ts + wall time since seen.

    >>> clock = EventClock()
    >>> clock.estimate(wall_ms=5) is None
    True
    >>> clock.seen(1_000, wall_ms=10); clock.seen(900, wall_ms=20)  # older: no change
    >>> clock.estimate(wall_ms=110)
    1100
    """

    __slots__ = ("max_ts", "wall_at_max")

    def __init__(self) -> None:
        self.max_ts: int | None = None
        self.wall_at_max = 0

    def seen(self, ts: int, wall_ms: int) -> None:
        """An event (or a recovered clock value) of time ``ts`` was seen at ``wall_ms``."""
        if self.max_ts is None or ts > self.max_ts:
            self.max_ts = ts
            self.wall_at_max = wall_ms

    def estimate(self, wall_ms: int) -> int | None:
        """Event time now, assuming it passed at wall speed since the newest event."""
        if self.max_ts is None:
            return None
        return self.max_ts + max(0, wall_ms - self.wall_at_max)


class VariantFeatures(Struct, frozen=True, kw_only=True):
    """One candidate variant of the offer, as the policy saw it when publishing."""

    items: tuple[str, ...]
    discount_pct: float
    bundle_price: float
    probability: float
    score: float
    support: float
    confidence: float
    lift: float

    def as_features(self) -> dict[str, float]:
        """Numeric features (for :class:`streamer.policy.LoggedDecision`)."""
        return {
            "discount_pct": self.discount_pct,
            "bundle_price": self.bundle_price,
            "probability": self.probability,
            "score": self.score,
            "support": self.support,
            "confidence": self.confidence,
            "lift": self.lift,
            "n_items": float(len(self.items)),
        }


FEEDBACK_SCHEMA_VERSION = 1


class FeedbackRecord(Struct, frozen=True, kw_only=True):
    """The decision ledger's record (topic ``feedback``, key offer_id): one impression, the
    variants it was chosen from (``candidates``; ``outcome.variant`` indexes them; empty when
    the offer was never found), its outcome, and ``decision``: the decision logged when the
    offer was made (:class:`streamer.engine.OfferDecision`: every action the policy scored,
    with the features it scored, ``shown[outcome.variant]`` the impressed one's row, and the
    direct-method expected rewards), so training and evaluation read what the policy saw.
    ``decision`` is null when the worker did not have it (an offer of an older
    worker, a decision evicted or not read yet): the trainer then rebuilds the features from
    the offer, and both sides count it (``streamer_feedback_decisions{source="rebuilt"}``).

    Extensible: ``context`` carries extra named features (segment features, model scores) a
    policy adds later; ``schema_version`` changes only when a field changes meaning (an
    optional field added, like ``decision``, keeps it). Readers should ignore fields they do
    not know.
    """

    schema_version: int
    outcome: ImpressionOutcome
    candidates: tuple[VariantFeatures, ...]
    context: dict[str, float] = {}
    decision: OfferDecision | None = None

    @classmethod
    def build(cls, outcome: ImpressionOutcome, offer: BundleOffer | None,
              decision: OfferDecision | None = None) -> FeedbackRecord:
        """The record of ``outcome``, with ``offer``'s variants as candidates and the logged
        ``decision`` of the offer.

        An offer whose id matches but whose variant count does not (it cannot be the shown
        one) contributes no candidates; a decision that is not the offer's (another id, or
        another variant count) is left out.
        """
        if decision is not None and (
            decision.offer_id != outcome.offer_id
            or offer is None
            or len(decision.shown) != len(offer.variants)
            or not 0 <= outcome.variant < len(decision.shown)
        ):
            decision = None
        candidates: tuple[VariantFeatures, ...] = ()
        if offer is not None and outcome.variant < len(offer.variants):
            candidates = tuple(
                VariantFeatures(
                    items=tuple(v.items), discount_pct=v.discount_pct,
                    bundle_price=v.bundle_price, probability=v.probability, score=v.score,
                    support=v.evidence.support, confidence=v.evidence.confidence,
                    lift=v.evidence.lift)
                for v in offer.variants)
        return cls(schema_version=FEEDBACK_SCHEMA_VERSION, outcome=outcome,
                   candidates=candidates, decision=decision)


class Tick(Struct, frozen=True, kw_only=True):
    """Timer message telling its partition that wall time was ``wall_ms`` when it was sent
    (it may be read much later: a redelivery after a restart; see the module docstring)."""

    wall_ms: int


@dataclass(frozen=True)
class RewardConfig:
    """Plain values for :class:`RewardTracker` (mapped from the ``rewards`` settings)."""

    window_ms: int = 30 * 60_000
    allowed_lateness_ms: int = 5 * 60_000
    specs: tuple[WindowSpec, ...] = (WindowSpec(60_000, 60_000),
                                     WindowSpec(3_600_000, 300_000))
    ledger_lateness_ms: int = 60_000
    #: Events further ahead than this of both their partition's clock and wall time are
    #: refused (``too_early``; :mod:`streamer.rewards.attribution`); None: none are.
    max_ahead_ms: int | None = 5 * 60_000
    by_anchor: bool = False
    by_segment: bool = False
    reward: RewardKind = "revenue"
    cost_ratio: float = 0.0
    dedup_capacity: int = 1_000_000
    #: The ledgers' clocks and closed windows' deletions trail their windows by write-backs
    #: (:meth:`RewardTracker.flushed` after each: :class:`~streamer.rewards.RewardLedger`).
    keep_closed: bool = False

    @property
    def outcome_dedup_ttl_ms(self) -> int:
        """An outcome redelivered later than this finds its windows closed anyway."""
        return max(s.size_ms for s in self.specs) + self.ledger_lateness_ms


def spec_label(size_ms: int, step_ms: int | None = None) -> str:
    """A window spec as in the settings: ``1m``, ``1h/5m``.

    >>> spec_label(60_000), spec_label(3_600_000, 300_000), spec_label(1_500)
    ('1m', '1h/5m', '1500ms')
    """
    def one(ms: int) -> str:
        for unit, n in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if ms % n == 0:
                return f"{ms // n}{unit}"
        return f"{ms}ms"

    if step_ms is None or step_ms == size_ms:
        return one(size_ms)
    return f"{one(size_ms)}/{one(step_ms)}"


@dataclass
class _Partition:
    attributor: Attributor
    ledger: RewardLedger
    attribution_clock: EventClock = field(default_factory=EventClock)
    ledger_clock: EventClock = field(default_factory=EventClock)


class RewardTracker:
    """Attribution and reward ledgers of the partitions this worker owns.

    ``sessions``, ``windows``, ``clocks`` and ``seen_outcomes`` are the shared mappings (faust
    tables live, dicts in tests); each partition owns the keys prefixed with its number. Call
    :meth:`reset` when partitions were reassigned: per-partition objects are rebuilt lazily
    from the (recovered) tables. Counts go to ``metrics``. Not thread-safe: one event loop.
    ``wall_ms`` is this process's wall time as it handles the message (for :meth:`tick`, the
    tick's stamp, beside ``now_ms``).

    >>> from streamer.events.models import Evidence, Variant
    >>> t = 1_700_000_000_000
    >>> v = Variant(items=["a", "b"], discount_pct=10.0, bundle_price=27.0, probability=1.0,
    ...             score=1.0, evidence=Evidence(support=1.0, confidence=1.0, lift=1.0))
    >>> offer = BundleOffer(offer_id="o1", ts=t, anchor_item_id="a", segment="all",
    ...                     policy_version="v1", variants=[v], expires_at=t + 3_600_000)
    >>> config = RewardConfig(window_ms=1_000, allowed_lateness_ms=0,
    ...                       specs=(WindowSpec(10_000, 10_000),), ledger_lateness_ms=0)
    >>> tables = {}, {}, {}, {}
    >>> tracker = RewardTracker(*tables, offers={"o1": offer}, config=config)
    >>> tracker.observe(ClickEvent(event_id="i1", ts=t, user_id="u", session_id="s",
    ...     item_id="a", kind="offer_impression", offer_id="o1", variant=0, propensity=1.0),
    ...     partition=2, wall_ms=0)
    []
    >>> sorted(tables[0])
    ['2|s']
    >>> outcomes, _ = tracker.tick(2, wall_ms=1_000)  # a second of idle wall time passed
    >>> [(o.impression_id, o.policy_version) for o in outcomes]
    [('i1', 'v1')]
    >>> tracker.record(outcomes[0], partition=1, wall_ms=1_000)
    []
    >>> _, windows = tracker.tick(1, wall_ms=11_000)
    >>> [(w.policy_version, w.impressions) for w in windows], tracker.open_state()
    ([('v1', 1)], (0, 0))
    """

    def __init__(
        self,
        sessions: MutableMapping[str, SessionState],
        windows: MutableMapping[str, WindowAggregate],
        clocks: MutableMapping[str, int],
        seen_outcomes: MutableMapping[str, SeenId],
        *,
        offers: OfferLookup,
        config: RewardConfig,
        metrics: Metrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._windows = windows
        self._clocks = clocks
        self._offers = offers
        self.config = config
        self.metrics = metrics or Metrics()
        self.outcome_dedup = Deduplicator(seen_outcomes, ttl_ms=config.outcome_dedup_ttl_ms,
                                          capacity=config.dedup_capacity)
        self._partitions: dict[int, _Partition] = {}
        # One counter child per attribution status: labels() takes a lock and builds a key
        # on every call (~0.9 us), and observe() counts every click and purchase.
        self._observed: dict[str, Counter] = {}

    def _partition(self, p: int, wall_ms: int) -> _Partition:
        part = self._partitions.get(p)
        if part is None:
            c = self.config
            part = _Partition(
                attributor=Attributor(
                    KeyPrefixView(self._sessions, f"{p}|"), self._offers,
                    window_ms=c.window_ms, allowed_lateness_ms=c.allowed_lateness_ms,
                    reward=c.reward, cost_ratio=c.cost_ratio,
                    watermarks=KeyPrefixView(self._clocks, f"attribution:{p}|"),
                    max_ahead_ms=c.max_ahead_ms),
                ledger=RewardLedger(
                    KeyPrefixView(self._windows, f"{p}|"), specs=c.specs,
                    allowed_lateness_ms=c.ledger_lateness_ms, by_anchor=c.by_anchor,
                    by_segment=c.by_segment,
                    watermarks=KeyPrefixView(self._clocks, f"ledger:{p}|"),
                    keep_closed=c.keep_closed),
            )
            # A recovered clock resumes from where it was, as if just seen: at ``wall_ms``,
            # this process's time now (module docstring: Restarts).
            if part.attributor.max_event_ts is not None:
                part.attribution_clock.seen(part.attributor.max_event_ts, wall_ms)
            if part.ledger.watermark_ms is not None:
                part.ledger_clock.seen(part.ledger.watermark_ms + c.ledger_lateness_ms, wall_ms)
            self._partitions[p] = part
        return part

    def reset(self) -> None:
        """Forget per-partition objects (after a rebalance; tables are the truth)."""
        self._partitions.clear()
        self.outcome_dedup.rebuild()

    # -- attribution (clicks and purchases agents, partition = the session's) -------------
    def observe(self, event: ClickEvent | PurchaseEvent, *, partition: int,
                wall_ms: int) -> list[ImpressionOutcome]:
        """Attribute one event; return the impressions whose windows closed meanwhile."""
        part = self._partition(partition, wall_ms)
        status = part.attributor.observe(event, now_ms=wall_ms)
        counter = self._observed.get(status)
        if counter is None:
            counter = self._observed[status] = self.metrics.attribution_events.labels(status)
        counter.inc()
        if status in ("late_applied", "too_late"):
            self.metrics.late_events.labels("attribution", status).inc()
        if status != "too_early":  # else the next tick would move the clock there after all
            part.attribution_clock.seen(event.ts, wall_ms)
        return part.attributor.advance()

    # -- the ledger (outcomes agent, partition = the policy version's) ---------------------
    def record(self, outcome: ImpressionOutcome, *, partition: int, wall_ms: int,
               offset: int = -1) -> list[RewardWindow]:
        """Count one closed impression (once by impression id) read at ``offset`` of
        ``partition`` (-1: unknown); return closed windows. The same message read again (a
        redelivery after a crash: same id, same offset) is let through the id check and
        recognised by each window's own mark (:class:`~streamer.rewards.RewardLedger`): the
        ids and the windows are two tables, and either's changes may have reached its
        changelog without the other's."""
        part = self._partition(partition, wall_ms)
        if not self.outcome_dedup.first_time(outcome.impression_id, ts_ms=outcome.ts,
                                             partition=partition, offset=offset):
            self.metrics.duplicates.labels("reward-outcomes").inc()
            return []
        version = outcome.policy_version
        if version is None:
            self.metrics.unversioned_outcomes.inc()
            return []
        m = self.metrics
        m.reward_impressions.labels(version).inc()
        m.reward_offer_clicks.labels(version).inc(outcome.clicked)
        m.reward_conversions.labels(version).inc(outcome.converted)
        m.reward_revenue.labels(version).inc(outcome.revenue)
        gain, loss = m.reward_sum.labels(version), m.reward_loss.labels(version)  # both exist
        if outcome.reward >= 0:
            gain.inc(outcome.reward)
        else:
            loss.inc(-outcome.reward)
        if not part.ledger.add(outcome, offset):
            m.late_events.labels("ledger", "missed_window").inc()
        part.ledger_clock.seen(outcome.ts, wall_ms)
        return self._published(part.ledger.advance())

    # -- the timer's tick (ticks agent, partition = the tick's) ----------------------------
    def tick(self, partition: int, *, wall_ms: int, now_ms: int | None = None
             ) -> tuple[list[ImpressionOutcome], list[RewardWindow]]:
        """Move partition ``partition``'s clocks to their idle estimates; return what closed.

        ``wall_ms`` is the tick's stamp (when its timer fired), ``now_ms`` this process's wall
        time (default: the system clock's). A partition rebuilt by this tick counts from
        ``now_ms``, and the stamp counts up to ``now_ms`` at most (module docstring: Restarts).
        """
        now = int(time.time() * 1000) if now_ms is None else now_ms
        part = self._partition(partition, now)
        stamp = min(wall_ms, now)
        outcomes = part.attributor.advance(part.attribution_clock.estimate(stamp))
        ledger_now = part.ledger_clock.estimate(stamp)
        windows = part.ledger.advance(ledger_now) if ledger_now is not None else []
        return outcomes, self._published(windows)

    def event_time(self, partition: int, *, wall_ms: int, now_ms: int | None = None
                   ) -> int | None:
        """Partition ``partition``'s event time as a :meth:`tick` with the same arguments
        moves its attribution to (None: no event seen and no clock recovered yet): the
        newest event time seen plus the idle wall time since. The worker revises offers at
        it on a tick (``streamer.app.price_sweep``)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return self._partition(partition, now).attribution_clock.estimate(min(wall_ms, now))

    def _published(self, windows: list[RewardWindow]) -> list[RewardWindow]:
        for w in windows:
            self.metrics.reward_windows.labels(spec_label(w.window_end - w.window_start)).inc()
        return windows

    def flushed(self) -> None:
        """A write-back flushed the tables: each ledger's trailing writes (its clock, its
        closed windows' deletions) become due (``keep_closed``; see
        :class:`~streamer.rewards.RewardLedger`). Writes nothing itself: each ledger writes
        them on its next record or tick, in its agent, on its own partition."""
        for part in self._partitions.values():
            if part.ledger.keep_closed:
                part.ledger.flushed()

    def open_windows(self) -> Iterator[tuple[int, WindowAggregate]]:
        """``(partition, window)`` for every open reward window (in the tables, not only the
        partitions touched since :meth:`reset`; closed markers left out)."""
        for key in list(self._windows):
            prefix, _, _ = key.partition("|")
            window = self._windows.get(key)
            if window is not None and not window.closed and prefix.isdigit():
                yield int(prefix), window

    def open_state(self) -> tuple[int, int]:
        """``(open sessions, open windows)`` on this worker: the state that must stay bounded."""
        return len(self._sessions), len(self._windows)
