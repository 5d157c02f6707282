"""Attribution: each offer impression joined with its outcome (click, purchases, reward).

Contract
--------
- **Linking.** Events are linked within one ``session_id`` and an attribution window
  (default 30 min, half-open ``[impression.ts, impression.ts + window_ms)`` in event time).
  An ``offer_click`` belongs to the latest impression *of its offer* at or before it. A purchase
  belongs to the latest impression at or before it that it matches:

  * a purchase that carries an ``offer_id`` matches only impressions of that offer (the
    storefront says which offer it went through; that claim wins over item overlap);
  * a purchase without ``offer_id`` matches an impression when the order contains every item of
    the bundle variant that was shown.

  A purchase is attributed at most once, to one impression; an impression may collect several
  purchases. Ties in timestamp go to the larger ``event_id`` so the result is deterministic.
- **How it was attributed.** Every outcome says so in ``attribution``: ``"offer"`` when at
  least one of its purchases carries the impression's ``offer_id`` (bought *through* the
  offer), ``"basket"`` when it converted only by containing the bundle's items (an organic
  basket: the offer may not have caused it), ``"none"`` when nothing was bought.
  ``direct_revenue`` and ``direct_reward`` count only the ``offer_id``-carrying purchases;
  ``revenue`` and ``reward`` count both kinds (the contract above, what the ledger reports).
  What a policy learns from is chosen with :data:`RewardAttribution` (:func:`learning_reward`).
- **Reward.** ``revenue`` is the money actually paid for the bundle's items: for every order
  line whose item is in the shown bundle, ``quantity x unit_price`` (order prices are what the
  customer paid, so the bundle discount is already in them). Extra units of a bundle item count
  too: the offer sold them. When the offer is unknown (see below) every line counts, because
  only an ``offer_id``-carrying purchase can match such an impression. With
  ``reward="margin"`` each line earns ``quantity x (unit_price - cost_ratio x list_price)``,
  where ``list_price = unit_price / (1 - discount_pct/100)`` if the purchase went through this
  offer (the discount was applied) and ``unit_price`` otherwise; margins can be negative.
- **Offers.** Impressions carry only ``offer_id`` and ``variant``; the bundle items, anchor,
  segment and policy version come from ``offers``, a ``Mapping[str, BundleOffer]`` keyed by
  offer_id or a callable ``offer_id -> BundleOffer | None``. It is read when the impression
  arrives and again when it closes (an offer may arrive after its impression on another
  topic). An offer still unknown at close leaves those fields ``None``/empty.
- **Time.** ``watermark = max event ts seen - allowed_lateness_ms``. An event at or after the
  watermark is on time (``"applied"``), even when out of order. An earlier one is *late*: it is
  counted and reported in the return value of :meth:`Attributor.observe`; it still counts
  (``"late_applied"``, and the records it reaches get ``late=True``) while some impression
  window it could reach is open, i.e. while ``ts + window_ms > watermark``; otherwise it is
  ``"too_late"`` and changes nothing. An impression closes when the watermark reaches
  ``ts + window_ms``; :meth:`Attributor.advance` returns the closed records, reward 0 when
  nothing was bought.
- **Events from the future.** One event stamped far ahead (a host with a broken clock; any ts
  up to the year 2100 passes validation) would move the clock there for good: every open
  impression would close without its purchases, and every later event of the stream would
  be ``"too_late"``. With ``max_ahead_ms`` set, an event more than that ahead of the clock
  *and* of ``now_ms`` (the caller's wall time, when it passes one) is ``"too_early"``:
  counted and reported, not applied, and the clock does not move. Both references, because
  neither alone tells a bad clock from real time: a replay of history runs event time far
  faster than wall time, so a gap in its traffic (a night, a weekend) puts the next event
  hours ahead of the clock, yet behind wall time; a storefront whose clock runs a little
  ahead of the worker's stays within reach of the clock its own events moved. Without
  ``now_ms`` only the clock judges (a gap wider than ``max_ahead_ms`` is then refused too),
  so a caller replaying history without one leaves ``max_ahead_ms`` unset (the default).
  The first event, before there is a clock, is not judged. Keep ``max_ahead_ms`` within
  ``allowed_lateness_ms``: an event that far ahead then makes no on-time event late.
- **State.** ``sessions`` maps session_id to a :class:`SessionState` (a faust Table live, a
  dict in tests). The class only assigns or deletes keys, never mutates a value it read.
  Everything older than the watermark minus the window is deleted, so state is bounded by the
  traffic of one window plus lateness. ``watermarks`` (key ``"max_event_ts"``) holds the event
  clock; pass a changelog-backed mapping so the clock is recovered together with the sessions:
  with a fresh clock a redelivered impression of an already closed window would open again.
- **Idempotence.** Every event whose ``ts + window_ms`` is after the watermark is remembered by
  ``event_id`` (pending, or as a tombstone once consumed); older ones are never applied. So a
  redelivered impression, click or purchase never counts twice.
- Nothing here blocks or does I/O. :meth:`observe` raises nothing for well-typed events; bad
  offer fields are reported as ``"invalid"``.

>>> from streamer.events.models import (BundleOffer, ClickEvent, Evidence, OrderLine,
...     PurchaseEvent, Variant)
>>> ev = Evidence(support=5.0, confidence=0.5, lift=2.0)
>>> offer = BundleOffer(offer_id="o1", ts=1_700_000_000_000, anchor_item_id="a", segment="all",
...     policy_version="v1", expires_at=1_700_003_600_000, variants=[Variant(items=["a", "b"],
...     discount_pct=10.0, bundle_price=27.0, probability=1.0, score=1.0, evidence=ev)])
>>> sessions = {}
>>> att = Attributor(sessions, {"o1": offer}, window_ms=60_000, allowed_lateness_ms=1_000)
>>> t = 1_700_000_000_000
>>> att.observe(ClickEvent(event_id="i1", ts=t, user_id="u", session_id="s", item_id="a",
...     kind="offer_impression", offer_id="o1", variant=0, propensity=0.5))
'applied'
>>> att.observe(PurchaseEvent(event_id="p1", ts=t + 5_000, user_id="u", session_id="s",
...     order_id="r1", items=[OrderLine(item_id="a", quantity=1, unit_price=18.0),
...     OrderLine(item_id="b", quantity=1, unit_price=9.0),
...     OrderLine(item_id="z", quantity=1, unit_price=4.0)]))
'applied'
>>> att.advance(t + 30_000)
[]
>>> [(r.impression_id, r.converted, r.reward, r.purchase_ids, r.attribution, r.direct_reward)
...  for r in att.advance(t + 61_000)]
[('i1', True, 27.0, ('p1',), 'basket', 0.0)]
>>> len(sessions)  # the purchase is remembered until no window can reach it
1
>>> att.advance(t + 70_000), sessions
([], {})
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Literal, TypeAlias

from msgspec import Struct

from streamer.events.codec import InvalidEvent, check_not_ahead
from streamer.events.models import (
    MAX_ORDER_LINES,
    MAX_PRICE,
    MAX_QUANTITY,
    BundleOffer,
    ClickEvent,
    OrderLine,
    PurchaseEvent,
)

OfferLookup: TypeAlias = Mapping[str, BundleOffer] | Callable[[str], BundleOffer | None]
RewardKind = Literal["revenue", "margin"]
#: How an outcome's purchases were linked to its impression (module docstring).
Attribution = Literal["offer", "basket", "none"]
#: Which reward a policy learns from and is evaluated on: ``"offer"`` the direct reward of
#: purchases that went through the offer (``direct_reward``), ``"any"`` the contract's reward
#: (``reward``: basket matches too).
RewardAttribution = Literal["offer", "any"]
REWARD_ATTRIBUTIONS: tuple[RewardAttribution, ...] = ("offer", "any")
#: What :meth:`Attributor.observe` did with an event.
Observation = Literal[
    "applied",  # on time (possibly out of order within the allowed lateness)
    "late_applied",  # behind the watermark but an impression window it can reach is open
    "too_late",  # behind every window it could reach: counted and reported, not applied
    "too_early",  # more than max_ahead_ms ahead of the clock and of now: not applied
    "duplicate",  # event_id already seen
    "ignored",  # not an offer event (view, click, add_to_cart)
    "invalid",  # offer event without offer_id/variant/propensity, or a variant the offer lacks
    "overflow",  # the session already holds max_session_events events (or, for a purchase,
    # max_session_lines order lines)
]

DEFAULT_WINDOW_MS = 30 * 60 * 1000
DEFAULT_ALLOWED_LATENESS_MS = 5 * 60 * 1000
DEFAULT_MAX_SESSION_EVENTS = 1000
#: A session's state is one table value, so one changelog record, which a broker refuses above
#: its ``message.max.bytes`` (Apache Kafka's default: 1 MiB); a purchase keeps its order lines
#: (~100 bytes each at the input bounds), so a session holds at most this many: a bot's
#: session of hundreds of 200-line orders would otherwise grow a record of megabytes.
DEFAULT_MAX_SESSION_LINES = 4000
WATERMARK_KEY = "max_event_ts"
_UNREAD = object()  # Attributor._max_ts before the clock was read


class ShownBundle(Struct, frozen=True, kw_only=True):
    """What the offer's chosen variant was, copied from the offer lookup."""

    policy_version: str
    anchor_item_id: str
    segment: str
    items: tuple[str, ...]
    discount_pct: float


class PendingImpression(Struct, frozen=True, kw_only=True):
    """An impression whose attribution window is still open."""

    event_id: str
    ts: int
    user_id: str
    offer_id: str
    variant: int
    propensity: float
    bundle: ShownBundle | None = None
    late: bool = False


class PendingClick(Struct, frozen=True, kw_only=True):
    """An offer click kept until no open impression can claim it."""

    event_id: str
    ts: int
    offer_id: str
    late: bool = False


class PendingPurchase(Struct, frozen=True, kw_only=True):
    """A purchase kept until no open impression can claim it."""

    event_id: str
    ts: int
    offer_id: str | None
    lines: tuple[OrderLine, ...]
    late: bool = False


class Tombstone(Struct, frozen=True, kw_only=True):
    """A click or purchase already credited to a closed impression: remembered for dedup."""

    event_id: str
    ts: int


class SessionState(Struct, frozen=True, kw_only=True):
    """Everything one session still needs; values in the ``sessions`` mapping."""

    impressions: tuple[PendingImpression, ...] = ()
    clicks: tuple[PendingClick, ...] = ()
    purchases: tuple[PendingPurchase, ...] = ()
    consumed: tuple[Tombstone, ...] = ()

    def size(self) -> int:
        """Events held (pending and tombstones)."""
        return len(self.impressions) + len(self.clicks) + len(self.purchases) + len(self.consumed)

    # holds() and oldest_ts() run on every click and purchase, on states of a few events:
    # plain loops, no set, list or generator built (before: a set of every event id and a
    # min() over unpacked generators; attributing a purchase took ~7.8 us, now ~5.8).
    def holds(self, event_id: str) -> bool:
        """True when this state remembers the event ``event_id``."""
        for events in (self.impressions, self.clicks, self.purchases, self.consumed):
            for e in events:
                if e.event_id == event_id:
                    return True
        return False

    def oldest_ts(self) -> int | None:
        """The smallest event ts held; the session is due at ``oldest_ts + window``."""
        oldest = None
        for events in (self.impressions, self.clicks, self.purchases, self.consumed):
            for e in events:
                if oldest is None or e.ts < oldest:
                    oldest = e.ts
        return oldest

    def purchases_alone(self) -> int | None:
        """The newest purchase's ts when this state holds purchases alone (no impression,
        click or tombstone: nothing of it can be attributed until an impression comes), else
        None."""
        if not self.purchases or self.impressions or self.clicks or self.consumed:
            return None
        newest = self.purchases[0].ts
        for p in self.purchases:
            if p.ts > newest:
                newest = p.ts
        return newest


_NO_STATE = SessionState()  # a session's state before its first event (immutable: shared)


class ImpressionOutcome(Struct, frozen=True, kw_only=True):
    """One impression joined with its outcome: the core of a decision-ledger record.

    ``ts`` is the impression's event time; ``attributed_at`` the event time the outcome was
    decided (the first attributed purchase, else the window's end). ``policy_version``,
    ``anchor_item_id``, ``segment``, ``items`` and ``discount_pct`` describe the shown variant
    and are empty when the offer was never found. ``late`` is set when the impression or a
    click or purchase credited to it arrived behind the watermark. ``attribution``,
    ``direct_revenue`` and ``direct_reward``: how the purchases were linked, and what the
    ``offer_id``-carrying ones alone earned (module docstring; the defaults are what a record
    written before these fields existed decodes to).
    """

    impression_id: str
    ts: int
    session_id: str
    user_id: str
    offer_id: str
    variant: int
    propensity: float
    policy_version: str | None
    anchor_item_id: str | None
    segment: str | None
    items: tuple[str, ...]
    discount_pct: float | None
    clicked: bool
    converted: bool
    revenue: float
    reward: float
    purchase_ids: tuple[str, ...]
    attributed_at: int
    late: bool
    attribution: Attribution = "none"
    direct_revenue: float = 0.0
    direct_reward: float = 0.0


#: The most one order can be worth (every line at the largest quantity and price): an outcome
#: is bounded by a few orders' worth.
MAX_ORDER_VALUE = MAX_ORDER_LINES * MAX_QUANTITY * MAX_PRICE
MAX_OUTCOME_VALUE = 10 * MAX_ORDER_VALUE


def check_outcome(outcome: ImpressionOutcome, *, now_ms: int, max_ahead_ms: int | None) -> None:
    """Refuse (:class:`~streamer.events.InvalidEvent`, kind ``semantic``) an outcome no
    attribution could have written: its rewards and revenues not finite or beyond a few
    orders' worth, its propensity outside (0, 1], or its times more than ``max_ahead_ms``
    after ``now_ms`` (None: not judged). Outcomes travel on an internal topic, decoded by type
    only; one of 1e308 made every later window of its version unpublishable, and one stamped
    decades ahead moved the ledger's clock there, so that every later outcome was too late.

    >>> o = ImpressionOutcome(impression_id="i", ts=0, session_id="s", user_id="u",
    ...     offer_id="o", variant=0, propensity=1.0, policy_version="v", anchor_item_id="a",
    ...     segment="all", items=("a", "b"), discount_pct=0.0, clicked=False, converted=True,
    ...     revenue=1e308, reward=30.0, purchase_ids=("p",), attributed_at=0, late=False)
    >>> check_outcome(o, now_ms=0, max_ahead_ms=None)
    Traceback (most recent call last):
    ...
    streamer.events.codec.InvalidEvent: semantic: outcome revenue 1e+308 is not within [0, 2e+14]
    """
    for name in ("revenue", "direct_revenue"):
        value = getattr(outcome, name)
        if not 0.0 <= value <= MAX_OUTCOME_VALUE:
            raise InvalidEvent("semantic", f"outcome {name} {value:.6g} is not within "
                                           f"[0, {MAX_OUTCOME_VALUE:.6g}]")
    for name in ("reward", "direct_reward"):
        value = getattr(outcome, name)
        if not -MAX_OUTCOME_VALUE <= value <= MAX_OUTCOME_VALUE:
            raise InvalidEvent("semantic", f"outcome {name} {value:.6g} is not within "
                                           f"[-{MAX_OUTCOME_VALUE:.6g}, {MAX_OUTCOME_VALUE:.6g}]")
    if not 0.0 < outcome.propensity <= 1.0:
        raise InvalidEvent("semantic", f"outcome propensity {outcome.propensity:.6g} is not "
                                       "within (0, 1]")
    if max_ahead_ms is not None:
        check_not_ahead(max(outcome.ts, outcome.attributed_at), now_ms=now_ms,
                        max_ahead_ms=max_ahead_ms)


def learning_reward(outcome: ImpressionOutcome, mode: RewardAttribution) -> tuple[float, bool]:
    """``(reward, converted)`` of ``outcome`` as a policy learns it under ``mode``: with
    ``"offer"`` only what was bought through the offer (a basket that merely contained the
    bundle is a conversion the offer may not have caused), with ``"any"`` the contract's.

    >>> o = ImpressionOutcome(impression_id="i", ts=0, session_id="s", user_id="u",
    ...     offer_id="o", variant=0, propensity=1.0, policy_version="v", anchor_item_id="a",
    ...     segment="all", items=("a", "b"), discount_pct=0.0, clicked=False, converted=True,
    ...     revenue=30.0, reward=30.0, purchase_ids=("p",), attributed_at=0, late=False,
    ...     attribution="basket")
    >>> learning_reward(o, "offer"), learning_reward(o, "any")
    ((0.0, False), (30.0, True))
    """
    if mode == "offer":
        return outcome.direct_reward, outcome.attribution == "offer"
    if mode == "any":
        return outcome.reward, outcome.converted
    raise ValueError(f"reward attribution must be one of {REWARD_ATTRIBUTIONS}, got {mode!r}")


def _lookup_function(offers: OfferLookup) -> Callable[[str], BundleOffer | None]:
    if isinstance(offers, Mapping):
        return offers.get
    return offers


def _shown_bundle(offer: BundleOffer | None, variant: int) -> ShownBundle | None:
    if offer is None or not 0 <= variant < len(offer.variants):
        return None
    v = offer.variants[variant]
    return ShownBundle(
        policy_version=offer.policy_version,
        anchor_item_id=offer.anchor_item_id,
        segment=offer.segment,
        items=tuple(v.items),
        discount_pct=v.discount_pct,
    )


def _purchase_matches(imp: PendingImpression, purchase: PendingPurchase) -> bool:
    if purchase.offer_id is not None:
        return purchase.offer_id == imp.offer_id
    if imp.bundle is None:
        return False
    bought = {line.item_id for line in purchase.lines}
    return all(item in bought for item in imp.bundle.items)


def bundle_revenue(
    imp: PendingImpression, purchase: PendingPurchase, *, reward: RewardKind, cost_ratio: float
) -> tuple[float, float]:
    """``(revenue, reward)`` one purchase earns the impression (module docstring: Reward).

    >>> imp = PendingImpression(event_id="i", ts=0, user_id="u", offer_id="o", variant=0,
    ...     propensity=1.0, bundle=ShownBundle(policy_version="v", anchor_item_id="a",
    ...     segment="all", items=("a", "b"), discount_pct=20.0))
    >>> p = PendingPurchase(event_id="p", ts=1, offer_id="o", lines=(
    ...     OrderLine(item_id="a", quantity=2, unit_price=8.0),
    ...     OrderLine(item_id="b", quantity=1, unit_price=4.0),
    ...     OrderLine(item_id="c", quantity=1, unit_price=100.0)))
    >>> bundle_revenue(imp, p, reward="revenue", cost_ratio=0.0)
    (20.0, 20.0)
    >>> bundle_revenue(imp, p, reward="margin", cost_ratio=0.5)  # list price 25, cost 12.5
    (20.0, 7.5)
    """
    items = None if imp.bundle is None else set(imp.bundle.items)
    discounted = purchase.offer_id == imp.offer_id and imp.bundle is not None
    undiscount = 1.0 / (1.0 - imp.bundle.discount_pct / 100.0) if discounted and imp.bundle else 1.0
    revenue = 0.0
    margin = 0.0
    for line in purchase.lines:
        if items is not None and line.item_id not in items:
            continue
        paid = line.quantity * line.unit_price
        revenue += paid
        margin += paid - cost_ratio * paid * undiscount
    return revenue, (revenue if reward == "revenue" else margin)


def _latest(candidates: Iterable[PendingImpression]) -> PendingImpression | None:
    return max(candidates, key=lambda i: (i.ts, i.event_id), default=None)


class Attributor:
    """Joins offer impressions with clicks and purchases; see the module docstring.

    Owns the ``sessions`` and ``watermarks`` mappings it is given (nobody else should write
    them) plus an in-memory index of when each session is next due, rebuilt from ``sessions``
    on first use so a restarted worker needs nothing else. Counters of every
    :data:`Observation` and of closed/converted impressions are in :attr:`counts` (in memory:
    they are metrics, not state).
    """

    def __init__(
        self,
        sessions: MutableMapping[str, SessionState],
        offers: OfferLookup,
        *,
        window_ms: int = DEFAULT_WINDOW_MS,
        allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
        reward: RewardKind = "revenue",
        cost_ratio: float = 0.0,
        max_session_events: int = DEFAULT_MAX_SESSION_EVENTS,
        max_session_lines: int = DEFAULT_MAX_SESSION_LINES,
        watermarks: MutableMapping[str, int] | None = None,
        max_ahead_ms: int | None = None,
    ) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        if allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be >= 0, got {allowed_lateness_ms}")
        if reward not in ("revenue", "margin"):
            raise ValueError(f"reward must be 'revenue' or 'margin', got {reward!r}")
        if not 0.0 <= cost_ratio < 1.0:
            raise ValueError(f"cost_ratio must be in [0, 1), got {cost_ratio}")
        if max_session_events <= 0:
            raise ValueError(f"max_session_events must be positive, got {max_session_events}")
        if max_session_lines <= 0:
            raise ValueError(f"max_session_lines must be positive, got {max_session_lines}")
        if max_ahead_ms is not None and max_ahead_ms < 0:
            raise ValueError(f"max_ahead_ms must be >= 0, got {max_ahead_ms}")
        self._sessions = sessions
        self._lookup = _lookup_function(offers)
        self.window_ms = window_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        self.reward = reward
        self.cost_ratio = cost_ratio
        self.max_session_events = max_session_events
        self.max_session_lines = max_session_lines
        self.max_ahead_ms = max_ahead_ms
        self._clock: MutableMapping[str, int] = {} if watermarks is None else watermarks
        # The clock's value, read from ``watermarks`` on first use and written through (this
        # class owns the mapping): every event reads it twice and may raise it.
        self._max_ts: object = _UNREAD
        self.counts: Counter[str] = Counter()
        # Due-time index with lazy deletion; _due holds each session's live entry. A session is
        # due a window after its oldest event, and events come nearly in time order, so most
        # entries come in due order: those not earlier than the newest queued go to a FIFO
        # (O(1)), the others to a heap; advance takes the earlier head of the two. Why: the
        # heap alone cost ~1 us per purchase in the worker (~21,000 sessions in steady state).
        self._queue: deque[tuple[int, str]] = deque()
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}
        # Sessions that hold purchases alone (no impression, click or tombstone): their newest
        # purchase's ts. Such a session closes with nothing to attribute, and once its newest
        # purchase has left every window it is deleted without reading it (see advance).
        self._purchases_only: dict[str, int] = {}
        self._indexed = False

    # -- time ---------------------------------------------------------------------------
    @property
    def max_event_ts(self) -> int | None:
        """The largest event time seen (or passed to :meth:`advance`), ``None`` before any."""
        m = self._max_ts
        if m is _UNREAD:
            m = self._max_ts = self._clock.get(WATERMARK_KEY)
        return m  # type: ignore[return-value]

    @property
    def watermark_ms(self) -> int | None:
        """``max_event_ts - allowed_lateness_ms``: older events are late."""
        m = self.max_event_ts
        return None if m is None else m - self.allowed_lateness_ms

    def _raise_clock(self, ts: int) -> None:
        m = self.max_event_ts
        if m is None or ts > m:
            self._clock[WATERMARK_KEY] = self._max_ts = ts

    # -- input ----------------------------------------------------------------------------
    def observe(self, event: ClickEvent | PurchaseEvent, *,
                now_ms: int | None = None) -> Observation:
        """Take one click or purchase event; return what was done with it (and count it).

        ``now_ms`` is the caller's wall time, which lets an event ahead of the clock but not
        of the present through (module docstring: Events from the future). Never closes
        anything: call :meth:`advance` for that.
        """
        if self._too_early(event.ts, now_ms):
            self.counts["too_early"] += 1
            return "too_early"
        status = self._observe(event)
        self.counts[status] += 1
        # Every event, offer-related or not, is evidence of how far event time has got.
        self._raise_clock(event.ts)
        return status

    def _too_early(self, ts: int, now_ms: int | None) -> bool:
        ahead = self.max_ahead_ms
        if ahead is None:
            return False
        clock = self.max_event_ts
        return (clock is not None and ts > clock + ahead
                and (now_ms is None or ts > now_ms + ahead))

    def _observe(self, event: ClickEvent | PurchaseEvent) -> Observation:
        item: PendingImpression | PendingClick | PendingPurchase
        late = False
        wm = self.watermark_ms
        if wm is not None:
            if event.ts + self.window_ms <= wm:
                return "too_late"
            late = event.ts < wm
        if isinstance(event, PurchaseEvent):
            item = PendingPurchase(
                event_id=event.event_id,
                ts=event.ts,
                offer_id=event.offer_id,
                lines=tuple(event.items),
                late=late,
            )
        elif event.kind == "offer_impression":
            if event.offer_id is None or event.variant is None or event.propensity is None:
                return "invalid"
            offer = self._lookup(event.offer_id)
            if offer is not None and event.variant >= len(offer.variants):
                return "invalid"
            item = PendingImpression(
                event_id=event.event_id,
                ts=event.ts,
                user_id=event.user_id,
                offer_id=event.offer_id,
                variant=event.variant,
                propensity=event.propensity,
                bundle=_shown_bundle(offer, event.variant),
                late=late,
            )
        elif event.kind == "offer_click":
            if event.offer_id is None:
                return "invalid"
            item = PendingClick(
                event_id=event.event_id, ts=event.ts, offer_id=event.offer_id, late=late
            )
        else:
            return "ignored"

        state = self._sessions.get(event.session_id) or _NO_STATE
        if state.holds(event.event_id):
            return "duplicate"
        if state.size() >= self.max_session_events:
            return "overflow"
        if isinstance(item, PendingPurchase) and (
                # Not summed over an empty tuple: most purchases start their session's state.
                len(item.lines) + (sum(len(p.lines) for p in state.purchases)
                                   if state.purchases else 0)
                > self.max_session_lines):
            return "overflow"
        if isinstance(item, PendingImpression):
            state = SessionState(
                impressions=(*state.impressions, item),
                clicks=state.clicks,
                purchases=state.purchases,
                consumed=state.consumed,
            )
        elif isinstance(item, PendingClick):
            state = SessionState(
                impressions=state.impressions,
                clicks=(*state.clicks, item),
                purchases=state.purchases,
                consumed=state.consumed,
            )
        else:
            state = SessionState(
                impressions=state.impressions,
                clicks=state.clicks,
                purchases=(*state.purchases, item),
                consumed=state.consumed,
            )
        self._sessions[event.session_id] = state
        self._schedule(event.session_id, state)
        return "late_applied" if late else "applied"

    # -- closing --------------------------------------------------------------------------
    def advance(self, now_ms: int | None = None) -> list[ImpressionOutcome]:
        """Close every impression whose window the watermark has passed; oldest first.

        ``now_ms`` moves the event clock forward (a timer passing stream time keeps an idle
        partition closing windows); it never moves it back. Also drops clicks, purchases and
        tombstones no open window can reach, and deletes empty sessions.
        """
        if now_ms is not None:
            self._raise_clock(now_ms)
        wm = self.watermark_ms
        if wm is None:
            return []
        if not self._indexed:
            for session_id, held in list(self._sessions.items()):
                self._schedule(session_id, held)
            self._indexed = True
        closed: list[ImpressionOutcome] = []
        queue, heap = self._queue, self._heap
        while True:
            if queue and (not heap or queue[0][0] <= heap[0][0]):
                if queue[0][0] > wm:
                    break
                due, session_id = queue.popleft()
            elif heap and heap[0][0] <= wm:
                due, session_id = heapq.heappop(heap)
            else:
                break
            if self._due.get(session_id) != due:
                continue  # superseded entry
            del self._due[session_id]
            newest = self._purchases_only.get(session_id)
            if newest is not None and newest + self.window_ms <= wm:
                # Purchases alone, every one of them out of reach of any impression still to
                # come (one that could claim them is too late now): _close would drop them all
                # and attribute nothing. Deleted without decoding the state, the one read of
                # most sessions closing on a store's purchase stream.
                del self._purchases_only[session_id]
                # del, not pop(): a table's pop() reads (decodes) the value it returns. try,
                # not contextlib.suppress: once per purchase, and suppress() costs a context
                # manager's object and two calls (~0.8 us in the worker's profile).
                try:  # noqa: SIM105 (see above)
                    del self._sessions[session_id]
                except KeyError:
                    pass
                continue
            state = self._sessions.get(session_id)
            if state is None:
                self._purchases_only.pop(session_id, None)
                continue
            remaining, records = self._close(session_id, state, wm)
            closed.extend(records)
            if remaining.size() == 0:  # never one of purchases alone: the shortcut took those
                del self._sessions[session_id]
            else:
                self._sessions[session_id] = remaining
                self._schedule(session_id, remaining)
        if closed:  # not on the events that close nothing, nearly all of them
            self.counts["closed"] += len(closed)
            self.counts["converted"] += sum(r.converted for r in closed)
            closed.sort(key=lambda r: (r.ts, r.impression_id))
        return closed

    def _schedule(self, session_id: str, state: SessionState) -> None:
        """Index ``state``, just stored (or found, on rebuild) under ``session_id``."""
        newest = state.purchases_alone()
        if newest is None:
            self._purchases_only.pop(session_id, None)
        else:
            self._purchases_only[session_id] = newest
        oldest = state.oldest_ts()
        if oldest is None:
            return
        due = oldest + self.window_ms
        if self._due.get(session_id) != due:
            self._due[session_id] = due
            self._enqueue(due, session_id)

    def _enqueue(self, due: int, session_id: str) -> None:
        queue = self._queue
        if not queue or due >= queue[-1][0]:
            queue.append((due, session_id))
        else:
            heapq.heappush(self._heap, (due, session_id))

    def _close(
        self, session_id: str, state: SessionState, wm: int
    ) -> tuple[SessionState, list[ImpressionOutcome]]:
        window = self.window_ms
        # An offer published after its impression was seen may have arrived since.
        imps = [
            i
            if i.bundle is not None
            else PendingImpression(
                event_id=i.event_id,
                ts=i.ts,
                user_id=i.user_id,
                offer_id=i.offer_id,
                variant=i.variant,
                propensity=i.propensity,
                bundle=_shown_bundle(self._lookup(i.offer_id), i.variant),
                late=i.late,
            )
            for i in state.impressions
        ]
        closing = {i.event_id for i in imps if i.ts + window <= wm}
        purchases_of: dict[str, list[PendingPurchase]] = {}
        clicks_of: dict[str, list[PendingClick]] = {}
        kept_purchases: list[PendingPurchase] = []
        kept_clicks: list[PendingClick] = []
        consumed = [t for t in state.consumed if t.ts + window > wm]
        # An event's owner matters only when it closes now: with no impression closing (a
        # session of purchases alone, due when its oldest leaves every window), none is sought.
        for p in state.purchases:
            owner = _latest(
                i for i in imps if i.ts <= p.ts < i.ts + window and _purchase_matches(i, p)
            ) if closing else None
            if owner is not None and owner.event_id in closing:
                purchases_of.setdefault(owner.event_id, []).append(p)
                if p.ts + window > wm:
                    consumed.append(Tombstone(event_id=p.event_id, ts=p.ts))
            elif p.ts + window > wm:
                kept_purchases.append(p)
        for c in state.clicks:
            owner = _latest(
                i for i in imps if i.offer_id == c.offer_id and i.ts <= c.ts < i.ts + window
            ) if closing else None
            if owner is not None and owner.event_id in closing:
                clicks_of.setdefault(owner.event_id, []).append(c)
                if c.ts + window > wm:
                    consumed.append(Tombstone(event_id=c.event_id, ts=c.ts))
            elif c.ts + window > wm:
                kept_clicks.append(c)

        records = []
        for imp in imps:
            if imp.event_id not in closing:
                continue
            bought = sorted(purchases_of.get(imp.event_id, []), key=lambda p: (p.ts, p.event_id))
            clicks = clicks_of.get(imp.event_id, [])
            revenue = reward = direct_revenue = direct_reward = 0.0
            through_offer = False
            for p in bought:
                rev, rew = bundle_revenue(imp, p, reward=self.reward, cost_ratio=self.cost_ratio)
                revenue += rev
                reward += rew
                if p.offer_id is not None and p.offer_id == imp.offer_id:
                    through_offer = True
                    direct_revenue += rev
                    direct_reward += rew
            attribution: Attribution = (
                "offer" if through_offer else "basket" if bought else "none"
            )
            b = imp.bundle
            records.append(
                ImpressionOutcome(
                    impression_id=imp.event_id,
                    ts=imp.ts,
                    session_id=session_id,
                    user_id=imp.user_id,
                    offer_id=imp.offer_id,
                    variant=imp.variant,
                    propensity=imp.propensity,
                    policy_version=None if b is None else b.policy_version,
                    anchor_item_id=None if b is None else b.anchor_item_id,
                    segment=None if b is None else b.segment,
                    items=() if b is None else b.items,
                    discount_pct=None if b is None else b.discount_pct,
                    clicked=bool(clicks),
                    converted=bool(bought),
                    revenue=revenue,
                    reward=reward,
                    purchase_ids=tuple(p.event_id for p in bought),
                    attributed_at=bought[0].ts if bought else imp.ts + window,
                    late=imp.late or any(p.late for p in bought) or any(c.late for c in clicks),
                    attribution=attribution,
                    direct_revenue=direct_revenue,
                    direct_reward=direct_reward,
                )
            )
        remaining = SessionState(
            impressions=tuple(i for i in imps if i.event_id not in closing),
            clicks=tuple(kept_clicks),
            purchases=tuple(kept_purchases),
            consumed=tuple(consumed),
        )
        return remaining, records
