"""The one place an event is handled: composes statistics, policy and offer building.

Plain Python, no Kafka. Two drivers run it: the faust app (``streamer.app``), where purchases are
fanned out by item through a repartition topic and each item's slice is learned on the worker
that owns the item; and replay/evaluation, which calls :meth:`Engine.handle_purchase` in
process. Both go through :meth:`Engine.fan_out` and :meth:`Engine.learn_basket`, so the same
events give the same state either way.

All state lives in mappings handed in (faust tables live, dicts otherwise); the engine only
assigns values, so every change reaches the changelog. It never mutates a value in place,
except, with ``in_place_learning``, a partner or triple table it copied itself since the last
:meth:`Engine.release_learned` (the worker releases on every flush), which it then assigns
again inside a new record.

Exactly once on top of at-least-once, in two steps, each next to the state it guards:

- *By event id*, where a purchase arrives (:meth:`Engine.accept`): an id seen before at
  another offset is a duplicate (the storefront sent it twice) and is dropped. The same message
  delivered again (same partition and offset: a redelivery after a crash) is let through,
  because what it changed may not have reached the changelogs.
- *By source offset*, in each anchor's record (:class:`ItemRecord`): the anchor's statistics and
  the highest offset of each purchases partition learned into them are one value, written with
  one assignment, so a faust table sends them in one changelog message and a worker killed at
  any moment recovers both or neither. A partition's purchases reach an anchor in offset order,
  so a basket at or below the mark is one already learned. Kept in two tables (two messages),
  a kill between the two writes recovered the memory without the counts it guards: the event,
  redelivered, was taken for a duplicate and lost (measured with ``tests/crash_harness.py``).
  The first design kept recent event ids in the record instead: exact too, but a hot item
  rewrote its last 1,024 ids (tens of KB) to its changelog on every write.

>>> engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
>>> from streamer.events import OrderLine, PurchaseEvent
>>> def order(n, items):
...     return PurchaseEvent(event_id=f"e{n}", ts=1_700_000_000_000 + n, user_id="u",
...         session_id=f"s{n}", order_id=f"o{n}",
...         items=[OrderLine(item_id=i, quantity=1, unit_price=2.0) for i in items])
>>> offers = [o for n in range(3)
...           for o in engine.handle_purchase(order(n, ["tea", "cup"]), offset=n)]
>>> engine.live_offer("tea").variants[0].items
['tea', 'cup']
>>> engine.handle_purchase(order(0, ["tea", "cup"]), offset=7)  # sent twice: a duplicate
[]
>>> engine.handle_purchase(order(2, ["tea", "cup"]), offset=2)  # redelivered: learnt already
[]
>>> round(engine.stats.candidates("tea", now_ms=1_700_000_000_002, max_pairs=1,
...     max_triples=0, min_support=0.0)[0].support, 6)   # three orders, each counted once
3.0

The policy is swappable while running (:meth:`Engine.set_policy`: one reference assignment);
offers built afterwards carry the new version. A learned ``TorchPolicy`` gets each decision's
context (segment, event time, catalogue prices, the River conversion model) through a
``DecisionFeaturizer``:

>>> from streamer.online import FEATURE_NAMES
>>> from streamer.policy import TorchPolicy
>>> learned = TorchPolicy.initial(FEATURE_NAMES, discount_levels=(0.0, 10.0), seed=0)
>>> engine.set_policy(learned) == "v0-greedy"       # returns the version it replaced
True
>>> offer = engine.handle_purchase(order(9, ["tea", "cup"]))[0]
>>> offer.policy_version == learned.version, [v.discount_pct for v in offer.variants]
(True, [0.0, 10.0])
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import msgspec

from streamer.copurchase import (
    TOTAL_KEY,
    CoPurchaseStats,
    Decayed,
    HeaviestCache,
    ItemStats,
    SessionItems,
    SessionItemsTracker,
)
from streamer.events import BundleOffer, ClickEvent, InvalidEvent, PurchaseEvent, internal_decoder
from streamer.events.candidates import BundleCandidate
from streamer.events.dedup import Deduplicator, SeenId
from streamer.events.models import MAX_PRICE, TimestampMs
from streamer.offers import (
    MATERIAL_SHIFT,
    OfferBuilder,
    Signature,
    bundle_price,
    offer_signature,
    proposals_signature,
    same_offer,
)
from streamer.online import (
    DISCOUNT_LEVELS,
    PROPENSITY_FEATURE,
    ConversionModel,
    DecisionContext,
    DecisionFeaturizer,
    check_segments,
    variant_features,
    variant_value,
)
from streamer.online.features import BUNDLE_KEY_PREFIX, bundle_of
from streamer.policy import (
    EpsilonGreedyPolicy,
    LoggedDecision,
    Policy,
    Proposal,
    action_rows,
    decision_actions,
    featurize,
)

if TYPE_CHECKING:  # river.drift takes a second to import: only where a monitor is made
    from streamer.online import DriftMonitor

#: An offer revision's plan (``Engine._revision_plan``): the anchor's re-check mark, each
#: segment's last offer, the candidates and their items' list prices.
_Plan = tuple[tuple[int, int] | None, list[BundleOffer | None], list[BundleCandidate],
              dict[str, float]]


_BasketPrice = Annotated[float, msgspec.Meta(ge=-1.0, le=MAX_PRICE)]


class ItemBasket(msgspec.Struct, array_like=True, frozen=True):
    """One anchor's view of an order: the internal message of the repartition on item.

    ``anchor`` is :data:`~streamer.copurchase.TOTAL_KEY` for the one message per order that
    counts orders (the denominator of support and lift). Its numbers are bounded as the events
    they come from are (a weight in (0, 1], prices -1 or a list price, an event time): a
    basket another writer got wrong (a stray producer, a worker of another version) is
    dead-lettered on decoding, not learned (a weight of 0 raised in the middle of learning and
    stopped the agent; a price of 1e308 was published in offers).
    """

    anchor: str
    partners: list[str]
    ts: TimestampMs
    event_id: str
    #: The anchor's unit price; negative (-1): not a list price, do not learn it.
    price: _BasketPrice = -1.0
    weight: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1.0
    partner_prices: list[_BasketPrice] = []  # aligned with partners, as ``price``
    #: Where the purchase was read: its ``purchases`` partition and offset (-1: unknown, e.g. a
    #: replay in process; then only the event-id check guards against counting it twice). For
    #: a session's co-view or co-cart (:meth:`Engine.session_baskets`), ``clicks`` partition
    #: ``p`` is source :data:`CLICKS_SOURCE` + ``p``.
    source: int = -1
    offset: int = -1
    #: False: the anchor was counted in this (pseudo-)order already; only its new partners
    #: are learned (a session's items join its pseudo-order one click at a time).
    count_anchor: bool = True


#: ``ItemBasket.source`` of ``clicks`` partition 0; purchases partitions are sources 0, 1, ...
CLICKS_SOURCE = 1 << 20

#: Which click kinds feed which session signal (``EngineConfig.co_view_weight`` /
#: ``co_cart_weight``).
SESSION_SIGNALS = {"view": "view", "click": "view", "add_to_cart": "cart"}

#: Marks of unchanged offers kept before the first purge of stale ones (Engine.revise_offers).
_UNCHANGED_PURGE_MIN = 4096
#: Offer signatures remembered (Engine._signature): about the offers table's decoded values.
_SIGNATURES_KEPT = 8192


class ItemRecord(msgspec.Struct, array_like=True, frozen=True):
    """The value of ``items[anchor]``: the anchor's statistics and how far into each purchases
    partition they have learned, in one value so one write (one changelog message) carries both.

    ``stats`` is None for the order counter (key :data:`~streamer.copurchase.TOTAL_KEY`).
    ``count`` is the anchor's decayed order count (the order total for the counter), which the
    engine mirrors into ``counts`` for readers of any item. ``sources`` maps a purchases
    partition to the highest offset learned from it (one entry per partition: bounded).
    ``price_ts`` is the event time of the purchase the anchor's price in ``catalog`` comes
    from (-1: unknown, a record written before it was kept): a purchase delivered late must
    not replace a newer price with its older one. Immutable, like its parts.

    >>> r = ItemRecord(None, Decayed(1.0, 5), {0: 41, 3: 7})
    >>> msgspec.json.decode(msgspec.json.encode(r), type=ItemRecord) == r
    True
    """

    stats: ItemStats | None
    count: Decayed
    sources: dict[int, int] = {}
    price_ts: int = -1


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Plain values the engine is built from (the app maps settings onto it)."""

    half_life_s: float = 45 * 24 * 3600.0
    top_k: int = 1024
    #: Budget of partner entries over all the anchors one engine holds (a worker: its
    #: partitions); an anchor's table then holds at most ``budget // anchors`` (at least
    #: ``min_k``, at most ``top_k``). None: ``top_k`` each.
    max_partner_entries: int | None = None
    max_pairs: int = 3
    max_triples: int = 1
    #: Capacity of an anchor's triple table, how many of an order's strongest partners form
    #: triples, and the decayed orders an anchor needs before it learns triples at all
    #: (``CoPurchaseStats``' ``top_k_triples`` / ``triple_partners`` /
    #: ``triple_min_orders``; a minimum speeds learning up at some cost in 3-item hit rate).
    top_k_triples: int = 256
    triple_partners: int = 8
    triple_min_orders: float = 0.0
    min_support: float = 2.0
    min_interval_ms: int = 5_000
    #: An anchor whose offer was reconsidered and left as it was waits ``min_interval_ms``
    #: before the next reconsideration, twice as long after each further such evaluation in a
    #: row, up to this long (event time); a published offer starts it over. At most
    #: ``min_interval_ms``: every ``min_interval_ms`` (see :meth:`Engine.revise_offers`).
    max_recheck_interval_ms: int = 60_000
    offer_ttl_ms: int = 24 * 3_600_000
    #: How much of an offer's probability mass must move before a revision goes out (total
    #: variation distance, :func:`~streamer.offers.same_offer`); a new bundle price or number
    #: of variants always goes out. 0: every change.
    min_change: float = MATERIAL_SHIFT
    #: The default segment: its offer is the one every shopper can be shown (unknown segment,
    #: or no offer of the shopper's own yet).
    segment: str = "all"
    #: Customer segments that get offers of their own, one per (anchor, segment), besides the
    #: default segment's (at most ``streamer.online.SEGMENT_SLOTS``; each gets an exact
    #: one-hot slot in the features). Empty: one offer per anchor, for ``segment``.
    segments: tuple[str, ...] = ()
    epsilon: float = 0.1
    discount_pct: float = 10.0
    dedup_ttl_ms: int = 24 * 3_600_000
    dedup_capacity: int = 1_000_000
    #: Weight of a session's co-viewed (``view``, ``click``) and co-carted (``add_to_cart``)
    #: items as a pseudo-order, against 1.0 for a purchase; 0.0 leaves the signal out
    #: (:mod:`streamer.copurchase.sessions`).
    co_view_weight: float = 0.0
    co_cart_weight: float = 0.0
    #: Weight of an order bought through an offer (one carrying an ``offer_id``) in the
    #: co-purchase statistics, against 1.0 for any other order; 0.0 leaves such orders out
    #: (:meth:`Engine.fan_out`).
    offer_purchase_weight: float = 0.0
    #: A session's pseudo-order ends after this long without a click of its signal; at most
    #: ``session_max_items`` items join one; at most ``session_capacity`` sessions are kept
    #: per ``clicks`` partition.
    session_gap_ms: int = 30 * 60_000
    session_max_items: int = 50
    session_capacity: int = 200_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", check_segments(self.segments))

    @property
    def offer_segments(self) -> tuple[str, ...]:
        """The segments an anchor gets offers for: the default one first, then the others."""
        return (self.segment, *(s for s in self.segments if s != self.segment))


@dataclass(slots=True)
class EngineState:
    """Every mapping the engine writes to, by role. ``items`` holds :class:`ItemRecord` values;
    ``counts`` mirrors each record's count (and holds nothing else); ``seen`` is the memory of
    :meth:`Engine.accept` (event ids of purchases, and of clicks in process)."""

    items: MutableMapping[str, ItemRecord]
    counts: MutableMapping[str, Any]
    catalog: MutableMapping[str, float]
    #: The last offer published per anchor (key :func:`offer_key`: the anchor itself for the
    #: default segment, anchor and segment for the others).
    offers: MutableMapping[str, BundleOffer]
    seen: MutableMapping[str, SeenId]
    #: Items each session viewed or carted (:mod:`streamer.copurchase.sessions`); only used
    #: when a session signal has a weight.
    sessions: MutableMapping[str, SessionItems] = dataclasses.field(default_factory=dict)

    @classmethod
    def in_memory(cls) -> EngineState:
        return cls(items={}, counts={}, catalog={}, offers={}, seen={}, sessions={})


class Engine:
    """Learns from purchases and clicks; returns the offers to publish.

    Not thread-safe: one engine per worker, called from its event loop only. The one
    exception is :meth:`set_policy`, a single reference assignment that may come from any
    thread or task: a decision uses the policy it read once at its start.

    ``conversion`` is the River conversion model the learned policy reads as a feature (a
    fresh one, answering its prior base rate, when not given); :meth:`learn_conversion` feeds it.
    ``decisions``: where the decision of every offer made is logged (:class:`OfferDecision`),
    so feedback carries what the policy scored, not a rebuild at closing time. ``drift``
    watches the reward of each policy version as :meth:`learn_conversion` learns it; when it
    sees a drift, the conversion model forgets its per-bundle history
    (:meth:`ConversionModel.forget_bundles`). None: no watch (replay, evaluation).
    ``in_place_learning``: learning updates the partner and triple tables it made itself in
    place until :meth:`release_learned` (see ``CoPurchaseStats.release``); a driver that
    sets it calls :meth:`release_learned` whenever the values written may be seen by anything
    else (the worker: after every flush of its write-back). Same results either way.
    """

    def __init__(
        self,
        config: EngineConfig,
        state: EngineState,
        policy: Policy,
        *,
        conversion: ConversionModel | None = None,
        decisions: DecisionSink | None = None,
        drift: DriftMonitor | None = None,
        in_place_learning: bool = False,
    ) -> None:
        self.config = config
        #: Where each offer's decision is logged when the offer is made (None: not logged;
        #: replay and evaluation need no ledger). See :meth:`_log_decision`.
        self.decisions = decisions
        self.state = state
        self._policy = policy
        self._fallback = self.v0_policy(config)
        self.conversion = conversion if conversion is not None else ConversionModel()
        self.drift = drift
        #: Drifts seen on the reward streams :meth:`learn_conversion` watches.
        self.reward_drifts = 0
        #: Decisions the live policy could not make (non-finite scores) and v0 made instead.
        self.policy_failures = 0
        #: Offers whose decision could not be logged (see :meth:`_log_decision`).
        self.decisions_unlogged = 0
        # Anchors' heaviest partners and triples, kept up to date by the learner and read by
        # the queries, so an offer revision need not rank a whole partner table (in memory
        # only: a cold or stale entry costs one full ranking, the results are the same).
        ranks = (HeaviestCache(), HeaviestCache())
        #: Queries (candidates, counts) over the records' statistics; learning goes through
        #: :meth:`learn_basket` only.
        anchors = ItemStatsView(state.items)
        self.stats = CoPurchaseStats(
            anchors, state.counts, half_life_s=config.half_life_s,
            top_k=config.top_k, top_k_triples=config.top_k_triples,
            triple_partners=config.triple_partners,
            triple_min_orders=config.triple_min_orders, ranks=ranks,
        )
        # Learning runs on scratch copies of the anchors of one batch being learned
        # (``learn_anchor`` reads and writes one key of items and one of counts); the engine
        # then writes each one's result and its events' ids back as one record. The partner
        # budget counts the anchors in the records.
        self._scratch_items: dict[str, ItemStats] = {}
        self._scratch_counts: dict[str, Decayed] = {}
        self._scratch_price_ts: dict[str, int] = {}  # ItemRecord.price_ts, likewise
        self._learner = CoPurchaseStats(
            self._scratch_items, self._scratch_counts, half_life_s=config.half_life_s,
            top_k=config.top_k, top_k_triples=config.top_k_triples,
            triple_partners=config.triple_partners,
            triple_min_orders=config.triple_min_orders, ranks=ranks,
            max_partner_entries=config.max_partner_entries, anchors=anchors,
            in_place=in_place_learning,
        )
        self.builder = OfferBuilder(segment=config.segment, ttl_ms=config.offer_ttl_ms)
        self._segments = config.offer_segments  # a property that builds a tuple: read once
        # Anchors whose offers were reconsidered and left as they were: the event time before
        # which they are not reconsidered, and the wait that set it (see revise_offers; in
        # memory only: a lost entry costs one evaluation).
        self._unchanged_at: dict[str, tuple[int, int]] = {}
        self._unchanged_purge = _UNCHANGED_PURGE_MIN
        # The newest event time of the baskets learned before this batch (see learn_baskets;
        # in memory only: after a restart, until the first batch, a late basket's anchor is
        # revised at its own time, as before).
        self._event_clock = 0
        # The signature of the last offer compared, per offer key (see _signature).
        self._signatures: dict[str, tuple[BundleOffer, Signature]] = {}
        self.dedup = Deduplicator(
            state.seen, ttl_ms=config.dedup_ttl_ms, capacity=config.dedup_capacity
        )
        self._session_weights = {"view": config.co_view_weight, "cart": config.co_cart_weight}
        self.sessions = SessionItemsTracker(
            state.sessions, gap_ms=config.session_gap_ms,
            max_items=config.session_max_items, capacity=config.session_capacity,
        )

    @classmethod
    def in_memory(cls, config: EngineConfig | None = None, *,
                  decisions: DecisionSink | None = None,
                  drift: DriftMonitor | None = None) -> Engine:
        """An engine on plain dicts with the v0 policy (replay, evaluation, tests)."""
        config = config or EngineConfig()
        return cls(config, EngineState.in_memory(), cls.v0_policy(config), decisions=decisions,
                   drift=drift)

    @property
    def policy(self) -> Policy:
        """The policy offers are built with now."""
        return self._policy

    def set_policy(self, policy: Policy) -> str:
        """Hot-swap the policy atomically (one reference assignment); returns the version it
        replaced. Nothing learned is lost: statistics, prices and dedup state are untouched,
        and offers built from now on carry ``policy.version`` (an offer whose variants did not
        change is still republished under the new version)."""
        previous, self._policy = self._policy, policy
        self._unchanged_at.clear()  # the new version reconsiders every offer at once
        return previous.version

    def learn_conversion(self, features: Mapping[str, float], converted: bool,
                         clicked: bool | None = None, *, reward: float | None = None,
                         policy_version: str | None = None) -> bool:
        """Learn one closed impression (the shown variant's features, whether it converted,
        whether the offer was clicked when known) into the conversion model the learned
        policy reads. With ``reward`` and the ``policy_version`` that earned it, the
        :attr:`drift` monitor watches that version's rewards: True when this one revealed a
        drift, and the conversion model then forgot its per-bundle history."""
        self.conversion.learn_one(features, converted, clicked)
        if self.drift is None or reward is None or policy_version is None:
            return False
        if not self.drift.observe_reward(policy_version, reward):
            return False
        self.conversion.forget_bundles()
        self.reward_drifts += 1
        return True

    def featurizer(self, now_ms: int, segment: str | None = None) -> DecisionFeaturizer:
        """The features of each (candidate, discount) at ``now_ms`` for ``segment`` (default:
        the default segment): the segment, the event time, catalogue prices and the conversion
        model (read lazily, per variant)."""
        context = DecisionContext(segment or self.config.segment, now_ms, self.state.catalog,
                                  self.config.segments)
        return DecisionFeaturizer(context, self.conversion)

    @staticmethod
    def v0_policy(config: EngineConfig) -> Policy:
        """The epsilon-greedy policy every engine starts with."""
        return EpsilonGreedyPolicy(
            epsilon=config.epsilon,
            discount_pct=config.discount_pct,
            max_variants=config.max_pairs + config.max_triples,
        )

    # -- the two steps both drivers share -------------------------------------------------
    def fan_out(self, purchase: PurchaseEvent, *, source: int = -1,
                offset: int = -1) -> list[ItemBasket]:
        """Split an order into one message per distinct item, plus the order counter;
        ``source``/``offset`` say where the purchase was read (see :class:`ItemBasket`).

        An order bought through an offer (it carries an ``offer_id``) weighs
        ``EngineConfig.offer_purchase_weight`` (0: no baskets at all). Why not 1 like any
        other order: the offer caused it, so counting it is evidence the policy made for
        itself. The bundle shown most sells most through its offer, its co-purchase
        confidence rises, and the conversion model, which reads that confidence, then rates
        it above bundles that go together as well but were shown less (in the closed-loop
        simulator, 20k impressions, seed 7, an offer's favourite's take rate was
        overestimated by a median 19 % and its other variants' underestimated by 9-12 %).

        Measured there (``benchmarks/simulate_baselines.py --impressions 100000 --seed S
        --methods streamer_learned``), the learned policy's share of the oracle with such
        orders left out against counted in full: seed 3 83.9 % against 83.2 %, seed 5 85.3 %
        against 83.8 %, seed 7 84.6 % against 82.8 %, seed 11 82.8 % against 82.0 % (most of
        the gain after the season change, where a stale favourite no longer feeds its own
        evidence). Over 20k impressions the difference is within the noise (-0.9 to +2.8
        points on the same seeds)."""
        through_offer = purchase.offer_id is not None
        weight = self.config.offer_purchase_weight if through_offer else 1.0
        if weight <= 0.0:
            return []
        # Prices paid through an offer are discounted: they do not update the catalogue.
        prices: dict[str, float] = {}
        for line in purchase.items:
            prices.setdefault(line.item_id, -1.0 if through_offer else line.unit_price)
        # The items are distinct: an anchor's partners are every other slot (slices, not a
        # scan comparing every item per anchor).
        items, paid = list(prices), list(prices.values())
        baskets = [
            ItemBasket(
                anchor=a,
                partners=items[:i] + items[i + 1:],
                ts=purchase.ts,
                event_id=purchase.event_id,
                price=paid[i],
                partner_prices=paid[:i] + paid[i + 1:],
                weight=weight,
                source=source,
                offset=offset,
            )
            for i, a in enumerate(items)
        ]
        baskets.append(
            ItemBasket(anchor=TOTAL_KEY, partners=[], ts=purchase.ts, event_id=purchase.event_id,
                       weight=weight, source=source, offset=offset)
        )
        return baskets

    def session_baskets(self, click: ClickEvent, *, partition: int = 0,
                        offset: int = -1) -> list[ItemBasket]:
        """What ``click`` (read from ``clicks`` ``partition`` at ``offset``) adds to its
        session's co-view or co-cart pseudo-order, as item baskets of the signal's weight: the
        clicked item bought with the session's earlier items, each earlier item with the
        clicked one (not counted again), and the order total when the session starts (see
        :mod:`streamer.copurchase.sessions`). Empty when the click's signal has no weight, or
        adds nothing. Learned like :meth:`fan_out`'s baskets, through :meth:`learn_baskets`.
        """
        signal = SESSION_SIGNALS.get(click.kind)
        if signal is None:
            return []
        weight = self._session_weights[signal]
        if weight <= 0.0:
            return []
        joined = self.sessions.observe(click.session_id, signal, click.item_id, ts_ms=click.ts,
                                       partition=partition, offset=offset)
        if joined is None:
            return []
        source = CLICKS_SOURCE + partition
        item, ts, event_id = joined.item, click.ts, click.event_id
        # A view's or cart's price is the item's list price as the storefront showed it.
        price = click.price if click.price is not None else -1.0
        baskets = [ItemBasket(anchor=item, partners=joined.earlier, ts=ts, event_id=event_id,
                              price=price, weight=weight, source=source, offset=offset)]
        baskets += [ItemBasket(anchor=e, partners=[item], ts=ts, event_id=event_id,
                               weight=weight, source=source, offset=offset,
                               count_anchor=False) for e in joined.earlier]
        if joined.first:
            baskets.append(ItemBasket(anchor=TOTAL_KEY, partners=[], ts=ts, event_id=event_id,
                                      weight=weight, source=source, offset=offset))
        return baskets

    def rebuild_indexes(self) -> None:
        """Recreate what the engine keeps in memory beside its mappings (the de-duplication
        and session eviction indexes, the count of anchors behind the partner budget) after
        the mappings changed under it: recovery, or partitions moved between workers."""
        self.dedup.rebuild()
        self.sessions.rebuild()
        self._learner.recount()
        self.release_learned()  # tables learned in place may be the old state's: copy again
        self._unchanged_at.clear()  # marks of evaluations of what may be another state

    def release_learned(self) -> None:
        """Every value learned so far may now be seen by others: learning copies an anchor's
        tables again before it updates them (``in_place_learning`` only; else nothing)."""
        self._learner.release()

    def has_learned(self, basket: ItemBasket) -> bool:
        """True when ``basket``'s purchase is already in its anchor's record (redelivered)."""
        return _learned_already(self.state.items.get(basket.anchor), basket)

    def learn_baskets(self, baskets: list[ItemBasket]) -> tuple[list[BundleOffer], int]:
        """Learn a batch of baskets (each anchor's slice of an order) once each, then revise
        each anchor's offer once, at the event time of its last basket; returns the offers
        that should go out and how many baskets were learned already (redelivered).

        A late basket (older than what the batches before it held) revises its anchor at the
        newest event time learned so far instead: an offer is made as of now, not as of a past
        moment, which published offers stamped (and expiring) in the past, built from
        statistics read back before what they had learned.

        A basket at or below its anchor's mark for its purchases partition was learned already
        (the purchase was redelivered and fanned out again): the record and the mark are one
        value, so a crash cannot separate them (see the module doc). Such a duplicate changes
        nothing but re-mirrors the record's count into ``counts``: a kill between the record's
        write and the mirror's loses the latter, and the event is then delivered again (its
        offset was not committed), which repairs it.
        """
        touched: dict[str, int] = {}
        duplicates = 0
        # Each anchor's marks so far, for the anchors learned in this batch; their statistics
        # are in the scratch mappings meanwhile, and each gets one record at the end.
        learned: dict[str, dict[int, int]] = {}
        try:
            for basket in baskets:
                if self._learn(basket, learned):
                    if basket.anchor != TOTAL_KEY:
                        touched[basket.anchor] = max(basket.ts,
                                                     touched.get(basket.anchor, basket.ts))
                else:
                    duplicates += 1
        finally:  # what was learned is written whatever happens to the rest
            self._write_learned(learned)
        clock = self._event_clock
        if touched:
            self._event_clock = max(clock, *touched.values())
            for anchor, ts in touched.items():
                if ts < clock:
                    touched[anchor] = clock
        return self._revise_anchors(touched), duplicates

    def _revise_anchors(self, touched: dict[str, int]) -> list[BundleOffer]:
        """:meth:`revise_offers` of each anchor at its time (``touched``), with the policy's
        decisions of all of them made at once when it decides in batches (``decide_many``:
        ``TorchPolicy``) and decisions are logged (the worker): the same offers, each
        decision's rows through the policy's network together. Why: torch's fixed cost per
        call on a decision's few dozen rows was about half of a learned decision's time
        (decisions of 20 anchors, in process: ~427 -> ~215 us each)."""
        policy = self._policy
        decide_many = getattr(policy, "decide_many", None) if self.decisions is not None else None
        if decide_many is None or len(touched) < 2:
            offers = []
            for anchor, ts in touched.items():
                offers += self.revise_offers(anchor, ts)
            return offers
        plans = [(anchor, ts, plan) for anchor, ts in touched.items()
                 if (plan := self._revision_plan(anchor, ts)) is not None]
        # The decisions _revise would ask the policy for: each due segment of each anchor
        # with candidates.
        asked: dict[tuple[str, str], tuple[list[BundleCandidate], DecisionFeaturizer]] = {}
        for anchor, ts, (_, lasts, candidates, _) in plans:
            for segment, last in zip(self._segments, lasts, strict=True) if candidates else ():
                if self._due(last, ts):
                    asked[(anchor, segment)] = (candidates, self.featurizer(ts, segment))
        answers = decide_many([(anchor, candidates, featurizer) for (anchor, _), (
            candidates, featurizer) in asked.items()]) if asked else []
        decided = {key: (answer, asked[key][1])
                   for key, answer in zip(asked, answers, strict=True)}
        offers = []
        for anchor, ts, plan in plans:
            offers += self._revise_planned(anchor, ts, plan, {
                segment: decided[(anchor, segment)]
                for segment in self._segments if (anchor, segment) in decided})
        return offers

    def learn_basket(self, basket: ItemBasket) -> BundleOffer | None:
        """:meth:`learn_baskets` for one basket: its anchor's revised offer, if any."""
        offers, _ = self.learn_baskets([basket])
        return offers[0] if offers else None

    def _learn(self, basket: ItemBasket, learned: dict[str, dict[int, int]]) -> bool:
        """Learn one basket into its anchor's statistics in the scratch mappings unless learned
        already (False then); ``learned``: the marks of the anchors learned in this batch so
        far (:meth:`_write_learned` makes their records). Why not one record per basket: a
        batch of purchases holds each anchor several times (the order counter once per
        purchase; ~3.7 baskets per anchor in the worker's batches on the throughput
        benchmark), and building, writing and reading back the record each time cost more
        than learning."""
        anchor = basket.anchor
        sources = learned.get(anchor)
        if sources is None:  # the anchor's first basket in this batch
            record = self.state.items.get(anchor)
            if _learned_already(record, basket):
                assert record is not None
                counts = self.state.counts
                if counts.get(anchor) != record.count:
                    counts[anchor] = record.count
                return False
            if record is not None:
                if record.stats is not None:
                    self._scratch_items[anchor] = record.stats
                self._scratch_counts[anchor] = record.count
                self._scratch_price_ts[anchor] = record.price_ts
                sources = dict(record.sources)  # the record is immutable, its dict too
            else:
                sources = {}
        elif _marked(sources, basket):
            return False  # learned already in this batch
        if anchor == TOTAL_KEY:
            self._learner.learn_order_total(basket.ts, basket.weight)
        else:
            self._learner.learn_anchor(anchor, basket.partners, basket.ts, basket.weight,
                                       count_anchor=basket.count_anchor)
        if basket.offset >= 0:
            sources[basket.source] = basket.offset
        learned[anchor] = sources  # once learned (a failed basket leaves no record behind)
        if anchor == TOTAL_KEY:
            return True
        catalog = self.state.catalog
        # The price of the newest purchase, whatever the order they arrive in.
        if basket.price >= 0 and basket.ts >= self._scratch_price_ts.get(anchor, -1):
            self._scratch_price_ts[anchor] = basket.ts
            if catalog.get(anchor) != basket.price:
                catalog[anchor] = basket.price
        # A partner's price is its own anchor's business (kept current there); here it is only
        # filled in when still unknown, so the first offers already carry right bundle prices
        # even when the partner's own slice of the order has not been learned yet.
        for partner, price in zip(basket.partners, basket.partner_prices, strict=False):
            if price >= 0 and partner not in catalog:
                catalog[partner] = price
        return True

    def _write_learned(self, learned: dict[str, dict[int, int]]) -> None:
        """Write each anchor learned in this batch as one record (its statistics, count and
        marks: the one write that makes its events count) and mirror its count into
        ``counts``; then empty the scratch mappings."""
        items, counts = self.state.items, self.state.counts
        scratch_items, scratch_counts = self._scratch_items, self._scratch_counts
        price_ts = self._scratch_price_ts
        for anchor, sources in learned.items():
            record = ItemRecord(scratch_items.get(anchor), scratch_counts[anchor], sources,
                                price_ts.get(anchor, -1))
            items[anchor] = record
            counts[anchor] = record.count
        scratch_items.clear()
        scratch_counts.clear()
        price_ts.clear()

    def revise_offers(self, anchor: str, now_ms: int) -> list[BundleOffer]:
        """:meth:`revise_offer` for each of the anchor's segments (``offer_segments``, the
        default one first), on one set of candidates; the offers that should go out.

        An anchor is reconsidered at most once per ``min_interval_ms`` (event time): after its
        last offer, and after an evaluation that left every segment's offer as it was. Why the
        latter: a hot anchor's offer rarely changes, and it used to be reconsidered (candidates
        ranked, the policy asked, the result compared) on every basket once its offer was
        ``min_interval_ms`` old: 24k of 26k such evaluations on ``benchmarks/throughput.py``'s
        20k purchases changed nothing; skipping them takes the engine from ~90 to ~72 us per
        purchase (in process, medians of 3). In the closed-loop simulator the learned policy's
        share of the oracle moved within its run-to-run spread (20k impressions: 68.8 -> 67.5%
        on seed 7, 68.3 -> 68.9% on seed 11).

        Each further evaluation in a row that leaves the offers as they were doubles the wait
        before the next, up to ``max_recheck_interval_ms``; an offer published for the anchor
        (or a new policy) starts it over. Why: with one wait, the throughput benchmark's
        purchases (100 ms apart in event time) still made 24.7k evaluations per 30k purchases
        that changed nothing, 11.9k with waits up to 60 s. A change waits at most
        ``max_recheck_interval_ms``; an anchor with no offer in some segment is reconsidered
        on every basket, so first offers are not delayed."""
        plan = self._revision_plan(anchor, now_ms)
        return [] if plan is None else self._revise_planned(anchor, now_ms, plan)

    def _revision_plan(self, anchor: str, now_ms: int) -> _Plan | None:
        """What :meth:`revise_offers` evaluates: the anchor's re-check mark, each segment's
        last offer, the candidates and their prices; None when nothing is due or the anchor
        sells too little."""
        unchanged = self._unchanged_at.get(anchor)
        if unchanged is not None and now_ms < unchanged[0]:
            return None
        offered, default, segments = self.state.offers, self.config.segment, self._segments
        # Each segment's last offer, read once: for the interval here and by its revision.
        lasts = [offered.get(offer_key(anchor, s, default)) for s in segments]
        # A loop, not all() over a generator: this runs on every basket, and the generator
        # cost more than the check (~0.4 us of ~0.8).
        for last in lasts:
            if self._due(last, now_ms):
                break
        else:
            return None  # every segment's offer is younger than the interval
        offerable = self._candidates(anchor, now_ms)
        if offerable is None:
            return None
        candidates, prices = offerable
        return unchanged, lasts, candidates, prices

    def _revise_planned(self, anchor: str, now_ms: int, plan: _Plan,
                        decided: Mapping[str, tuple[Any, DecisionFeaturizer]] | None = None,
                        ) -> list[BundleOffer]:
        """The offers of ``plan`` (:meth:`_revision_plan`) that should go out, and the
        anchor's re-check mark updated; ``decided``: per segment, the policy's decision made
        already (``decide_many``'s, or its error) and its featurizer."""
        unchanged, lasts, candidates, prices = plan
        interval = self.config.min_interval_ms
        offers = []
        # No candidates, no proposals (the Policy contract): the policy is not asked.
        for segment, last in zip(self._segments, lasts, strict=True) if candidates else ():
            offer = self._revise(anchor, segment, last, candidates, prices, now_ms,
                                 decided.get(segment) if decided else None)
            if offer is not None:
                offers.append(offer)
        if offers:
            if unchanged is not None:
                del self._unchanged_at[anchor]  # a change: the next waits start over
        elif interval > 0 and None not in lasts:
            self._note_unchanged(anchor, now_ms, unchanged)
        return offers

    def _due(self, last: BundleOffer | None, now_ms: int) -> bool:
        """Whether a segment whose last offer is ``last`` may get a new one at ``now_ms``: it
        has none, or it is at least ``min_interval_ms`` old (event time)."""
        return last is None or now_ms - last.ts >= self.config.min_interval_ms

    def _note_unchanged(self, anchor: str, now_ms: int, last: tuple[int, int] | None) -> None:
        interval = self.config.min_interval_ms
        wait = interval if last is None else max(
            interval, min(2 * last[1], self.config.max_recheck_interval_ms))
        marks = self._unchanged_at
        marks[anchor] = (now_ms + wait, wait)
        if len(marks) >= self._unchanged_purge:
            # A mark past for longer than the longest wait is an anchor gone quiet: drop it
            # (its next evaluation waits from the start again; amortised: the next purge
            # waits until the marks have doubled again).
            horizon = now_ms - max(interval, self.config.max_recheck_interval_ms)
            for key in [k for k, (due, _) in marks.items() if due <= horizon]:
                del marks[key]
            self._unchanged_purge = max(_UNCHANGED_PURGE_MIN, 2 * len(marks))

    def revise_offer(
        self, anchor: str, now_ms: int, segment: str | None = None
    ) -> BundleOffer | None:
        """A new offer for ``anchor`` and ``segment`` (default: the default segment) when it
        changed materially (:func:`~streamer.offers.same_offer`; or the live one is past half
        its life) and the last offer is at least ``min_interval_ms`` old (event time); else
        None."""
        segment = segment or self.config.segment
        previous = self.state.offers.get(offer_key(anchor, segment, self.config.segment))
        if not self._due(previous, now_ms):
            return None
        offerable = self._candidates(anchor, now_ms)
        if offerable is None or not offerable[0]:
            return None
        candidates, prices = offerable
        return self._revise(anchor, segment, previous, candidates, prices, now_ms)

    # -- the price sweep: partners' prices reach the offers that bundle them ---------------
    def stale_anchors(self, keys: Iterable[str]) -> list[str]:
        """The anchors of the live offers of ``keys`` (``offers`` keys, :func:`offer_key`)
        that quote a stale bundle price (:meth:`quotes_stale_price`), each once, in order.
        Reads only: any caller may check, the owner of the anchor revises (:meth:`reprice`).

        Why a sweep: an anchor's offer is rebuilt from the catalogue only when the anchor is
        revised (bought, co-viewed), while a partner's price is kept current by the partner's
        own purchases. A cold anchor's offer went on quoting the partner's old price until it
        expired (``offer_ttl_ms``, a day by default).

        An offer expired by the newest event time learned is passed over before its prices
        are read: :meth:`reprice` would not revive it (it revises no earlier than that time),
        and it stays in ``offers`` as its anchor's last offer, so on a catalogue with a long
        tail most offers are expired ones. Read, not checked, it costs ~3 us instead of ~12."""
        offers = self.state.offers
        # A table's peek: read without filling its cache with every offer of the scan.
        read = getattr(offers, "peek", offers.get)
        now_ms = self._event_clock
        stale: dict[str, None] = {}  # an ordered set
        known: dict[str, float] = {}  # prices read in this call: offers share items
        for key in keys:
            offer = read(key)
            if (offer is not None and offer.expires_at > now_ms
                    and self.quotes_stale_price(offer, known)):
                stale[offer.anchor_item_id] = None
        return list(stale)

    def quotes_stale_price(self, offer: BundleOffer,
                           known: dict[str, float] | None = None) -> bool:
        """Whether a variant of ``offer`` has a bundle price other than the one its items'
        list prices in the catalogue give now, to the cent (the arithmetic of its revision,
        :func:`~streamer.offers.builder.bundle_price`: the same floats for the same prices).
        Why to the cent, not a tolerance: a revision publishes any new bundle price
        (:func:`~streamer.offers.same_offer`), and a storefront shows the cents. An item the
        catalogue lacks counts 0.0 there too (never the case: an offer is built from known
        prices only, and prices are never deleted). ``known``: prices read already, by item
        (read from the catalogue once each and added there)."""
        known = {} if known is None else known
        catalog = self.state.catalog
        for v in offer.variants:
            items = v.items
            for item in items:
                if item not in known:
                    known[item] = catalog.get(item, 0.0)
            if bundle_price(items, v.discount_pct, known.get) != v.bundle_price:
                return True
        return False

    def reprice(self, anchors: Iterable[str], now_ms: int) -> list[BundleOffer]:
        """Revise each of ``anchors`` whose live offer (in some segment) still quotes a stale
        bundle price and has not expired at ``now_ms``; returns the offers to publish.

        A normal revision (:meth:`revise_offers`: the live policy decides, its decision is
        logged, the offer replaces the last one in ``offers``), made as of ``now_ms``, or the
        newest event time learned when that is later (a revision is never stamped before what
        was learned, as in :meth:`learn_baskets`), and at once: the anchor's re-check wait
        (an evaluation that changed nothing) no longer holds, a price did change. An offer
        younger than ``min_interval_ms`` waits as any revision does: a later sweep finds it
        again. An anchor that sells too little now to have candidates keeps its offer until
        it expires. An expired offer is not revived."""
        now_ms = max(now_ms, self._event_clock)
        offers, default = self.state.offers, self.config.segment
        touched: dict[str, int] = {}
        for anchor in anchors:
            for segment in self._segments:
                offer = offers.get(offer_key(anchor, segment, default))
                if (offer is not None and offer.expires_at > now_ms
                        and self.quotes_stale_price(offer)):
                    self._unchanged_at.pop(anchor, None)
                    touched[anchor] = now_ms
                    break
        return self._revise_anchors(touched) if touched else []

    def _candidates(
        self, anchor: str, now_ms: int
    ) -> tuple[list[BundleCandidate], dict[str, float]] | None:
        """The anchor's offerable candidates now and the list prices of their items (None: the
        anchor sells too little)."""
        # A pair's co-count never exceeds its anchor's count: an anchor bought fewer than
        # min_support times has no candidate, and most anchors of a large catalogue are such
        # (the shortcut saves half the engine's time on the throughput benchmark's events).
        if self.stats.item_count(anchor, now_ms) < self.config.min_support * (1.0 - 1e-9):
            return None
        candidates = self.stats.candidates(
            anchor,
            now_ms=now_ms,
            max_pairs=self.config.max_pairs,
            max_triples=self.config.max_triples,
            min_support=self.config.min_support,
        )
        # A bundle is offerable once every item's price is known (learned from its own orders),
        # so no offer goes out with a wrong bundle price. Each price is read once here and the
        # revision builds from these: a table read is a Python call, and the candidates share
        # items (the anchor is in all of them), read up to three times each before.
        catalog = self.state.catalog
        prices: dict[str, float] = {}
        offerable: list[BundleCandidate] = []
        for candidate in candidates:
            for item in candidate.items:
                if item not in prices:
                    price = catalog.get(item)
                    if price is None:
                        break
                    prices[item] = price
            else:
                offerable.append(candidate)
        return offerable, prices

    def _revise(
        self, anchor: str, segment: str, previous: BundleOffer | None,
        candidates: list[BundleCandidate], prices: dict[str, float], now_ms: int,
        decided: tuple[Any, DecisionFeaturizer] | None = None,
    ) -> BundleOffer | None:
        """``anchor``'s new offer for ``segment`` (``previous``: its last one) from
        ``candidates`` (not empty), or None; ``prices``: the list prices of their items;
        ``decided``: the policy's decision for it made already (a ``TorchPolicy.decide_many``
        answer: a Decision or the error ``decide`` would raise) and its featurizer."""
        key = offer_key(anchor, segment, self.config.segment)
        if not self._due(previous, now_ms):
            return None
        policy = self._policy  # read once: a concurrent swap applies from the next decision
        # Built only for a policy that reads features, else when the decision is logged: v0
        # reads none, and most of its revisions change nothing (building one cost ~1-2 us, on
        # each of ~0.8 revisions per purchase in steady state). It reads the catalogue and the
        # conversion model when asked, not when built, so either way it answers the same.
        featurizer = decided[1] if decided is not None else (
            self.featurizer(now_ms, segment) if getattr(policy, "uses_features", True)
            else None)
        scored: Any = None  # the policy's own Decision, when it has one (TorchPolicy.decide)
        try:
            decide = getattr(policy, "decide", None) if self.decisions is not None else None
            if decided is not None:
                if isinstance(decided[0], FloatingPointError):
                    raise decided[0]
                scored = decided[0]
                proposals = scored.proposals
            elif decide is not None:
                if featurizer is None:
                    featurizer = self.featurizer(now_ms, segment)
                scored = decide(anchor, candidates, featurizer)
                proposals = scored.proposals
            else:
                proposals = policy.propose(anchor, candidates, featurizer=featurizer)
        except FloatingPointError:
            # A version whose outputs are not finite must not stop offers: v0 decides, and
            # the offer says so in its policy_version.
            self.policy_failures += 1
            policy = self._fallback
            scored = None
            proposals = policy.propose(anchor, candidates)
        if not proposals:
            return None
        if (
            previous is not None
            and previous.policy_version == policy.version
            # An unchanged offer is still republished once half its life is gone, so a
            # storefront never drops a good offer at expiry while its anchor still sells.
            and now_ms - previous.ts < self.config.offer_ttl_ms // 2
            and same_offer(self._signature(key, previous),
                           proposals_signature(proposals, prices=prices),
                           shift=self.config.min_change)
        ):
            return None  # decided before the variants are built and the offer id hashed
        # On the wire a variant's score is its co-purchase score whatever the policy, so
        # feedback decoding (logged_decision) can rebuild the features from the offer.
        variants = self.builder.variants(proposals, prices=prices, candidate_scores=True)
        offer = self.builder.offer(anchor, variants, policy_version=policy.version,
                                   now_ms=now_ms, segment=segment)
        self.state.offers[key] = offer
        if self.decisions is not None:
            if featurizer is None:
                featurizer = self.featurizer(now_ms, segment)
            self._log_decision(offer, proposals, scored, candidates, featurizer)
        return offer

    def _signature(self, key: str, offer: BundleOffer) -> Signature:
        """``offer_signature(offer)``, ``offer`` being the last offer of ``key``; remembered
        while the offers table hands out this very object (its decoded-value cache). Why: an
        anchor's offer is compared with most of its revisions (~94 % of them change nothing in
        steady state), and its signature cost ~0.5 us to rebuild each time (4 variants)."""
        known = self._signatures.get(key)
        if known is not None and known[0] is offer:
            return known[1]
        signature = offer_signature(offer)
        if len(self._signatures) >= _SIGNATURES_KEPT:
            self._signatures.clear()  # amortised: hot keys come back on their next revision
        self._signatures[key] = (offer, signature)
        return signature

    def _log_decision(self, offer: BundleOffer, proposals: list[Proposal], scored: Any,
                      candidates: list[BundleCandidate],
                      featurizer: DecisionFeaturizer) -> None:
        """Log ``offer``'s decision to :attr:`decisions`: a policy that scores features
        (``decide``: ``TorchPolicy``) logs the rows it scored as they are; one that does not
        (v0) logs what the learned policy would have scored in its place, featurized now: every
        candidate at every discount level (the shown discounts added when off the grid), in
        ``TorchPolicy.decide``'s order, so the trainer learns from this moment's prices and
        conversion propensities, not those of the moment the impression closes. The support
        (rows it could show) is the shown rows of a positive probability."""
        if scored is not None:
            rows: Sequence[Mapping[str, float]] = scored.variant_features
            shown: Sequence[int] = scored.shown
        else:
            levels = list(DISCOUNT_LEVELS)
            levels += sorted({p.discount_pct for p in proposals} - set(levels))
            actions = decision_actions(candidates, levels)
            index = action_rows(actions)
            rows = featurize(featurizer, actions)
            shown = [index[(tuple(p.candidate.items), p.discount_pct)] for p in proposals]
        model = self.conversion
        try:
            dm = [r[PROPENSITY_FEATURE] * variant_value(r, reward=model.reward,
                                                        cost_ratio=model.cost_ratio)
                  for r in rows]
            support = [row for row, p in zip(shown, proposals, strict=True)
                       if p.probability > 0]
            decision = OfferDecision.of(offer, rows, shown=shown, expected_rewards=dm,
                                        support=support)
        except (KeyError, ValueError):
            # Rows without the engine's features (a policy of another featurizer): its
            # feedback falls back to the rebuild (counted there).
            self.decisions_unlogged += 1
            return
        self.decisions.add(decision)  # type: ignore[union-attr]

    # -- conveniences for in-process drivers ------------------------------------------------
    def accept(self, event_id: str, ts_ms: int, partition: int = 0, offset: int = -1) -> bool:
        """True the first time an event id is seen (within the de-duplication TTL), and again
        when the message that was first seen with it is delivered again (same partition and
        offset: see the module doc)."""
        return self.dedup.first_time(event_id, ts_ms=ts_ms, partition=partition, offset=offset)

    def handle_purchase(self, purchase: PurchaseEvent, partition: int = 0,
                        offset: int = -1) -> list[BundleOffer]:
        """Learn the whole order (once), return the offers to publish. ``partition`` and
        ``offset`` say where it was read (``offset`` -1: unknown, the event id alone decides)."""
        if not self.accept(purchase.event_id, purchase.ts, partition, offset):
            return []
        offers, _ = self.learn_baskets(self.fan_out(purchase, source=partition, offset=offset))
        return offers

    def handle_click(self, click: ClickEvent, partition: int = 0,
                     offset: int = -1) -> list[BundleOffer]:
        """Learn a click (once): its session's co-view or co-cart, when that signal has a
        weight (:meth:`session_baskets`); return the offers to publish."""
        if not self.accept(click.event_id, click.ts, partition, offset):
            return []
        baskets = self.session_baskets(click, partition=partition, offset=offset)
        if not baskets:
            return []
        offers, _ = self.learn_baskets(baskets)
        return offers

    def live_offer(
        self, anchor: str, segment: str | None = None, *, now_ms: int | None = None
    ) -> BundleOffer | None:
        """The offer last published for ``anchor`` and ``segment``, falling back to the
        default segment's when the segment has none (or, given ``now_ms``, when its offer has
        expired by then). ``segment`` None: the default segment's."""
        default = self.config.segment
        if segment is not None and segment != default:
            offer = self.state.offers.get(offer_key(anchor, segment, default))
            if offer is not None and (now_ms is None or offer.expires_at > now_ms):
                return offer
        return self.state.offers.get(anchor)


def offer_key(anchor: str, segment: str, default_segment: str) -> str:
    """The key of an (anchor, segment)'s offer in ``EngineState.offers``: the anchor for the
    default segment (as before segments existed), else anchor and segment joined by a unit
    separator (a character no item id or segment name is expected to contain).

    >>> offer_key("tea", "all", "all"), offer_key("tea", "loyal", "all")
    ('tea', 'tea\\x1floyal')
    """
    return anchor if segment == default_segment else f"{anchor}\x1f{segment}"



def _learned_already(record: ItemRecord | None, basket: ItemBasket) -> bool:
    return record is not None and _marked(record.sources, basket)


def _marked(sources: Mapping[int, int], basket: ItemBasket) -> bool:
    """Whether ``basket`` is at or below the mark of its purchases partition in ``sources``
    (a record's, or the marks a batch has learned so far): learned already."""
    return basket.offset >= 0 and sources.get(basket.source, -1) >= basket.offset


class ItemStatsView(MutableMapping[str, ItemStats]):
    """Read-only ``anchor -> ItemStats`` over a mapping of :class:`ItemRecord` s, for
    :class:`~streamer.copurchase.CoPurchaseStats` queries (the order counter has no stats and
    is left out). Writing raises ``TypeError``: records are written by the engine only."""

    __slots__ = ("_records",)

    def __init__(self, records: Mapping[str, ItemRecord]) -> None:
        self._records = records

    def __getitem__(self, key: str) -> ItemStats:
        stats = self._records[key].stats
        if stats is None:
            raise KeyError(key)
        return stats

    def get(self, key: str, default: Any = None) -> Any:
        record = self._records.get(key)
        return default if record is None or record.stats is None else record.stats

    def __contains__(self, key: object) -> bool:
        return key != TOTAL_KEY and key in self._records

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._records if k != TOTAL_KEY)

    def __len__(self) -> int:
        return len(self._records) - (TOTAL_KEY in self._records)

    def __setitem__(self, key: str, value: ItemStats) -> None:
        raise TypeError("items are learned through Engine.learn_basket")

    def __delitem__(self, key: str) -> None:
        raise TypeError("items are learned through Engine.learn_basket")


# -- the decision ledger, logged when an offer is made --------------------------------------
class OfferDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The decision an offer was built from, logged when :meth:`Engine._revise` made it: the
    features of every action (bundle x discount) the policy scored, exactly as it scored them
    (the context, catalogue prices and conversion propensity of that moment), which row each
    offer variant is (``shown[i]``: the row of ``offer.variants[i]``), and the direct-method
    expected reward of every row (the conversion propensity of the row times its value, what
    ``ConversionModel.expected_reward`` gave at that moment), for doubly robust estimates;
    ``support``: the rows the policy could show (probability > 0: the offer's variants, less
    any of probability 0), which off-policy evaluation must know (``LoggedDecision.support``).
    None in a decision logged by an older release: then the offer's probabilities tell, when
    the offer is known (:func:`logged_decision`).

    Rows are stored as columns ``names`` and float rows (a feature dict repeats every name per
    row; this form is about half the bytes) plus each row's bundle identity key
    (:func:`streamer.online.bundle_key`, empty when a row has none), from which
    :meth:`variant_features` rebuilds the dicts exactly. Immutable: a table value and a
    message.

    >>> from types import SimpleNamespace as C
    >>> offer = C(offer_id="o", ts=5, expires_at=9, policy_version="v", anchor_item_id="a",
    ...           segment="all")
    >>> rows = [{"x": 0.5, "bundle:a+b": 1.0}, {"x": 1.5, "bundle:a+c": 1.0}]
    >>> d = OfferDecision.of(offer, rows, shown=(1,), expected_rewards=(0.0, 2.0),
    ...                      support=(1,))
    >>> d.variant_features() == rows, d.bundles
    (True, ('bundle:a+b', 'bundle:a+c'))
    >>> d.logged(variant=0, propensity=1.0, reward=3.0).chosen
    1
    >>> msgspec.json.decode(msgspec.json.encode(d), type=OfferDecision) == d
    True
    """

    offer_id: str
    anchor: str
    segment: str
    ts: int
    expires_at: int
    policy_version: str
    names: tuple[str, ...]
    rows: tuple[tuple[float, ...], ...]
    bundles: tuple[str, ...]
    shown: tuple[int, ...]
    expected_rewards: tuple[float, ...] | None = None
    support: tuple[int, ...] | None = None

    @classmethod
    def of(cls, offer: Any, rows: Sequence[Mapping[str, float]], *, shown: Sequence[int],
           expected_rewards: Sequence[float] | None = None,
           support: Sequence[int] | None = None) -> OfferDecision:
        """``offer``'s decision from feature dicts sharing one set of names (besides their
        bundle key). Raises ``ValueError`` when they do not, or ``shown`` or ``support`` is out
        of range."""
        if not rows:
            raise ValueError("a decision needs at least one row")
        first = rows[0]
        names = tuple(k for k in first if not k.startswith(BUNDLE_KEY_PREFIX))
        bundles = []
        values = []
        for row in rows:
            bundle = bundle_of(row) or ""
            if len(row) != len(names) + (1 if bundle else 0):
                raise ValueError("decision rows must have the same features")
            try:
                values.append(tuple([float(row[n]) for n in names]))
            except KeyError as e:
                raise ValueError(f"a decision row lacks feature {e.args[0]!r}") from e
            bundles.append(bundle)
        if not all(0 <= i < len(rows) for i in (*shown, *(support or ()))):
            raise ValueError("shown or support rows out of range")
        if expected_rewards is not None and len(expected_rewards) != len(rows):
            raise ValueError("expected_rewards must have one value per row")
        return cls(
            offer_id=offer.offer_id, anchor=offer.anchor_item_id, segment=offer.segment,
            ts=offer.ts, expires_at=offer.expires_at,
            policy_version=offer.policy_version, names=names, rows=tuple(values),
            bundles=tuple(bundles), shown=tuple(shown),
            expected_rewards=None if expected_rewards is None else tuple(expected_rewards),
            support=None if support is None else tuple(support),
        )

    def variant_features(self) -> list[dict[str, float]]:
        """The rows as the feature dicts the policy scored."""
        names, out = self.names, []
        for values, bundle in zip(self.rows, self.bundles, strict=True):
            row = dict(zip(names, values, strict=True))
            if bundle:
                row[bundle] = 1.0
            out.append(row)
        return out

    def logged(self, variant: int, propensity: float, reward: float,
               offer: BundleOffer | None = None) -> LoggedDecision:
        """The training record of an impression of offer variant ``variant``, its support
        :meth:`support_of` ``offer``. Raises ``ValueError`` when the offer has no such
        variant."""
        if not 0 <= variant < len(self.shown):
            raise ValueError(f"variant {variant} out of range for offer {self.offer_id}")
        return LoggedDecision(
            variant_features=self.variant_features(),
            chosen=self.shown[variant],
            propensity=propensity,
            reward=reward,
            expected_rewards=self.expected_rewards,
            support=self.support_of(offer),
        )

    def support_of(self, offer: BundleOffer | None = None) -> tuple[int, ...] | None:
        """The rows the policy could show: :attr:`support` as logged; for a decision of an
        older release (None), the shown rows whose variant in ``offer`` (this decision's) has
        a positive probability; None (unknown) without either."""
        if self.support is not None:
            return self.support
        if offer is None or len(offer.variants) != len(self.shown):
            return None
        return tuple(row for row, v in zip(self.shown, offer.variants, strict=True)
                     if v.probability > 0)

    def record_fields(self, variant: int) -> dict[str, Any]:
        """The fields :func:`logged_decision` takes as they are (``variant_features``,
        ``chosen``, ``expected_rewards``, ``support``) for an impression of offer variant
        ``variant``."""
        if not 0 <= variant < len(self.shown):
            raise ValueError(f"variant {variant} out of range for offer {self.offer_id}")
        return {"variant_features": self.variant_features(), "chosen": self.shown[variant],
                "expected_rewards": self.expected_rewards, "support": self.support}


class DecisionHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of an encoded :class:`OfferDecision` that :class:`DecisionLog` keeps it by
    (decoding only these skips the rows)."""

    offer_id: str
    anchor: str
    segment: str
    ts: int
    expires_at: int


#: A decision as the decisions topic carries it and :class:`DecisionLog` holds it: MessagePack.
#: The topic is internal (workers write and read it) and a decision is mostly floats, which
#: MessagePack copies as 9 bytes where JSON formats each in up to ~20 characters of decimal:
#: on the 1,601 decisions of ``benchmarks/throughput.py``'s 20k purchases 2.8 KB instead of
#: 3.8 KB on average (through the broker and back to every worker), encoded in 4.6 instead
#: of 10.8 us, a header decoded in 1.2 instead of 2.8 us and a whole decision in 5.2 instead
#: of 7.6 us. Feedback records, which users and the trainer read, stay JSON.
encode_decision = msgspec.msgpack.Encoder().encode
# Decoders raising nothing but InvalidEvent: a message of the topic that does not decode
# (invalid UTF-8 in a string, nesting too deep) must not stop the feed or the agent closing
# an impression of its offer.
_decode_header = internal_decoder(DecisionHeader, msgpack=True)
_decode_decision = internal_decoder(OfferDecision, msgpack=True)
_decode_header_json = internal_decoder(DecisionHeader)
_decode_decision_json = internal_decoder(OfferDecision)


def _is_json(data: bytes) -> bool:
    """Whether an encoded decision is JSON, as a worker of an earlier version wrote it to the
    topic: a JSON object starts with "{", which as MessagePack is a lone integer (never a
    decision, a map), so the first byte tells the formats apart."""
    return data[:1] == b"{"


class DecisionSink(Protocol):
    """Where :class:`Engine` logs the decision of each offer it makes."""

    def add(self, decision: OfferDecision) -> None: ...


class DecisionLog:
    """Logged decisions by offer_id, bounded. A decision is needed while an impression of its
    offer can still close: its offer may be shown until it expires or a newer offer for the
    same anchor and segment replaces it, and an impression closes up to the attribution window
    plus allowed lateness after it was shown. Set ``retention_ms`` to that plus a margin for
    the clock below running ahead of the attribution's (a partition lagging others, events
    learned before the impressions they close: twice the window is ample). So each decision
    is kept until ``min(expires_at, ts of its successor) + retention_ms`` on the decisions'
    clock (the newest ``ts`` added: event time, like ``OfferIndex``), and at most ``capacity``
    (soonest end first). What stays is the live offers' decisions plus those of the last
    ``retention_ms`` of revisions: with hot anchors revised every few seconds and offers
    living a day, the successor rule keeps ~35 minutes of revisions instead of a day's. A
    :class:`DecisionSink`. Not thread-safe.

    That clock only moves forward, so a decision added with the reader's wall clock
    (``wall_ms``) is skipped and counted in :attr:`ahead` when stamped more than
    ``max_ahead_ms`` after it: one decision stamped in 2099 on the decisions topic would
    otherwise have evicted every decision held and each later one as it came.

    >>> from types import SimpleNamespace as C
    >>> def decision(oid, ts, anchor="a"):
    ...     offer = C(offer_id=oid, ts=ts, expires_at=ts + 1_000, policy_version="v",
    ...               anchor_item_id=anchor, segment="all")
    ...     return OfferDecision.of(offer, [{"x": 1.0}], shown=(0,))
    >>> log = DecisionLog(retention_ms=500, capacity=3)
    >>> log.add(decision("o1", 0)); log.add(decision("o2", 100, "b"))
    >>> log.get("o1").offer_id, len(log)
    ('o1', 2)
    >>> log.add(decision("o3", 1_550, "c"))  # o1 expired at 1000, kept until 1500
    >>> log.get("o1") is None, log.ids()
    (True, ['o2', 'o3'])
    >>> log.add(decision("o4", 1_560, "c"))  # replaces o3: kept until 1560 + 500
    >>> log.add(decision("o5", 2_061, "d")); log.ids()
    ['o4', 'o5']
    >>> log.add(decision("o6", 2_062, "e")); log.add(decision("o7", 2_063, "f")); log.ids()
    ['o5', 'o6', 'o7']
    >>> guarded = DecisionLog(retention_ms=500, max_ahead_ms=1_000)
    >>> guarded.add(decision("o8", 4_070_000_000_000), wall_ms=1_700_000_000_000)
    >>> guarded.ahead, len(guarded), guarded.clock_ms
    (1, 0, None)
    """

    def __init__(self, *, retention_ms: int, capacity: int = 1_000_000,
                 max_ahead_ms: int | None = None) -> None:
        if retention_ms < 0 or capacity <= 0:
            raise ValueError("need retention_ms >= 0 and capacity > 0")
        self.retention_ms = retention_ms
        self.capacity = capacity
        self.max_ahead_ms = max_ahead_ms
        self.ahead = 0  # decisions skipped: stamped more than max_ahead_ms after wall_ms
        # Held encoded, as on the decisions topic (encode_decision: ~3 KB for a typical
        # 12-row decision, against ~9 KB as decoded tuples of Python floats), decoded by get()
        # once per closing impression: a worker reading the topic (add_encoded) decodes only
        # each header.
        self._decisions: dict[str, tuple[str, str, bytes]] = {}  # id -> (anchor, segment, data)
        self._ends: dict[str, int] = {}  # offer_id -> when its decision may go
        self._heap: list[tuple[int, str]] = []  # (end, offer_id); stale entries skipped
        self._newest: dict[tuple[str, str], tuple[int, str]] = {}  # (anchor, segment) -> (ts, id)
        self.clock_ms: int | None = None
        self.evicted = 0

    def add(self, decision: OfferDecision, *, wall_ms: int | None = None) -> None:
        """Keep ``decision`` (idempotent by offer_id) and drop what is no longer needed;
        skipped when stamped more than ``max_ahead_ms`` after ``wall_ms`` (given)."""
        self._keep(decision, encode_decision(decision), wall_ms)

    def add_encoded(self, value: bytes, *, wall_ms: int | None = None) -> None:
        """:meth:`add` for an encoded decision (a message of the decisions topic:
        :data:`encode_decision`'s, or JSON from a worker of an earlier version), decoding only
        its header. Raises :class:`~streamer.events.InvalidEvent` when it is not one."""
        decode = _decode_header_json if _is_json(value) else _decode_header
        self._keep(decode(value), value, wall_ms)

    def _keep(self, decision: OfferDecision | DecisionHeader, encoded: bytes,
              wall_ms: int | None) -> None:
        if (wall_ms is not None and self.max_ahead_ms is not None
                and decision.ts - wall_ms > self.max_ahead_ms):
            self.ahead += 1
            return
        oid = decision.offer_id
        if oid not in self._decisions:
            self._set_end(oid, decision.expires_at + self.retention_ms)
        key = (decision.anchor, decision.segment)
        self._decisions[oid] = (*key, encoded)
        previous = self._newest.get(key)
        if previous is None or previous <= (decision.ts, oid):
            self._newest[key] = (decision.ts, oid)
            if previous is not None and previous[1] != oid:
                self._set_end(previous[1], decision.ts + self.retention_ms)
        elif previous[1] != oid:  # an older revision, arrived late: already replaced
            self._set_end(oid, previous[0] + self.retention_ms)
        if self.clock_ms is None or decision.ts > self.clock_ms:
            self.clock_ms = decision.ts
        heap, ends = self._heap, self._ends
        while heap and (len(self._decisions) > self.capacity or heap[0][0] <= self.clock_ms):
            end, gone = heapq.heappop(heap)
            if ends.get(gone) != end:
                continue  # superseded by an earlier end
            del ends[gone]
            anchor, segment, _ = self._decisions.pop(gone)
            self.evicted += 1
            newest = self._newest.get((anchor, segment))
            if newest is not None and newest[1] == gone:
                del self._newest[(anchor, segment)]

    def _set_end(self, offer_id: str, end: int) -> None:
        current = self._ends.get(offer_id)
        if current is None or end < current:
            self._ends[offer_id] = end
            heapq.heappush(self._heap, (end, offer_id))

    def get(self, offer_id: str) -> OfferDecision | None:
        """The decision of offer ``offer_id`` (None: never logged, evicted, or a message
        whose header was a decision's but whose rows are not: its feedback is rebuilt)."""
        held = self._decisions.get(offer_id)
        if held is None:
            return None
        try:
            data = held[2]
            decision: OfferDecision = (_decode_decision_json if _is_json(data)
                                       else _decode_decision)(data)
        except InvalidEvent:
            return None
        return decision

    def ids(self) -> list[str]:
        """The offer ids held, oldest first."""
        return list(self._decisions)

    def __len__(self) -> int:
        return len(self._decisions)


# -- the decision ledger, decoded for training ---------------------------------------------
@dataclass(frozen=True, slots=True)
class OfferedBundle:
    """A bundle of a published offer, seen as the candidate it was built from (it fits
    :class:`streamer.events.candidates.BundleCandidate`)."""

    items: tuple[str, ...]
    support: float
    confidence: float
    lift: float
    score: float


def offer_prices(offer: BundleOffer, known: Mapping[str, float] | None = None) -> dict[str, float]:
    """List prices of every item of ``offer``: ``known`` ones as given, the others from the
    variants' bundle prices (``bundle_price / (1 - discount)`` is the bundle's list price; what
    the known items do not explain is split evenly among the unknown ones).

    >>> from streamer.events import Evidence, Variant
    >>> ev = Evidence(support=1.0, confidence=0.5, lift=1.0)
    >>> offer = BundleOffer(offer_id="o", ts=1_700_000_000_000, anchor_item_id="a",
    ...     segment="all", policy_version="v", expires_at=1_700_000_001_000, variants=[
    ...     Variant(items=["a", "b"], discount_pct=10.0, bundle_price=9.0, probability=1.0,
    ...             score=0.5, evidence=ev)])
    >>> offer_prices(offer, {"a": 6.0}), offer_prices(offer)
    ({'a': 6.0, 'b': 4.0}, {'a': 5.0, 'b': 5.0})
    """
    prices = {i: float(p) for i, p in (known or {}).items() if i in _offer_items(offer)}
    for v in offer.variants:
        unknown = [i for i in v.items if i not in prices]
        if not unknown or v.discount_pct >= 100:
            continue
        list_price = v.bundle_price / (1.0 - v.discount_pct / 100.0)
        rest = max(0.0, list_price - sum(prices[i] for i in v.items if i in prices))
        for i in unknown:
            prices[i] = rest / len(unknown)
    return prices


def _offer_items(offer: BundleOffer) -> set[str]:
    return {i for v in offer.variants for i in v.items}


class _RecordFields(msgspec.Struct, frozen=True):
    """The fields of a feedback record :func:`logged_decision` reads, typed. Converted loosely
    (``"1"`` and ``1.0`` are the variant 1, as ``int()`` read them), but never a non-finite or
    fractional variant, nor a value of another kind (an ``OverflowError`` or ``TypeError``
    raised past the trainer's invalid-record path stopped it on every start)."""

    variant: int
    propensity: float
    reward: float
    ts: int | None = None
    segment: str | None = None


class _CarriedRows(msgspec.Struct, frozen=True):
    """A decision a flat record carries itself (see :func:`logged_decision`), typed."""

    variant_features: list[dict[str, float]]
    chosen: int
    expected_rewards: list[float] | None = None
    support: list[int] | None = None


_Fields = TypeVar("_Fields", _RecordFields, _CarriedRows)


def _fields(record: Mapping[str, Any], model: type[_Fields], what: str) -> _Fields:
    try:
        return msgspec.convert(record, model, strict=False)
    except msgspec.ValidationError as e:
        raise ValueError(f"feedback record lacks {what}: {e}") from e


def carries_decision(record: Mapping[str, Any]) -> bool:
    """Whether :func:`logged_decision` takes ``record``'s decision as it is (else: rebuilt from
    the offer at the time it is called, what operators count as ``rebuilt``)."""
    return record.get("decision") is not None or (
        "variant_features" in record and "chosen" in record)


def logged_decision(
    record: Mapping[str, Any],
    offer: BundleOffer | None,
    *,
    prices: Mapping[str, float] | None = None,
    conversion: ConversionModel | None = None,
    discount_levels: tuple[float, ...] = DISCOUNT_LEVELS,
    segments: tuple[str, ...] = (),
) -> LoggedDecision:
    """One ``feedback`` record (decoded JSON, ``ImpressionOutcome`` fields) and the offer it
    was an impression of -> the trainer's :class:`~streamer.policy.LoggedDecision`. Pure given
    ``conversion``'s state (it is read, not trained).

    Read from the record: ``variant`` (index into ``offer.variants``), ``propensity``, ``reward``,
    and optionally ``ts`` (event time; else the offer's) and ``segment``. When the record carries
    the decision logged when the offer was made (``decision``: an :class:`OfferDecision` or its
    decoded JSON, as a worker's ``FeedbackRecord`` does), or the decision itself
    (``variant_features``, ``chosen`` and optionally ``expected_rewards`` and ``support``), those
    are used as they are (:func:`carries_decision`). The support of a carried :class:`OfferDecision`
    that does not say it (an older release's) is the offer's variants of a positive probability,
    when the offer is known; that of flat rows without one is unknown (``LoggedDecision.support``
    None: the chosen row only, the cautious side). Otherwise the decision is rebuilt (its support:
    the offer's variants of a positive probability): the actions are the offer's distinct bundles
    (evidence and co-purchase score from their variants) at every ``discount_levels`` (plus the
    shown discount if off the grid), in the order ``TorchPolicy.decide`` uses; features as the
    engine computes them, with ``prices`` (the catalogue, else :func:`offer_prices`) and
    ``conversion``'s propensity, which also gives the direct-method ``expected_rewards``;
    ``segments``: the engine's configured segments (``EngineConfig.segments``, for the segment
    slots). Raises ``ValueError`` for a record that does not fit the offer. ``offer`` may be None
    for a record that carries its decision (checked against the decision then); rebuilding one that
    does not needs it.

    >>> from streamer.events import Evidence, Variant
    >>> ev = Evidence(support=3.0, confidence=0.5, lift=2.0)
    >>> offer = BundleOffer(offer_id="o", ts=1_700_000_000_000, anchor_item_id="a",
    ...     segment="all", policy_version="v", expires_at=1_700_000_001_000, variants=[
    ...     Variant(items=["a", b], discount_pct=10.0, bundle_price=9.0, probability=0.5,
    ...             score=0.5, evidence=ev) for b in ("b", "c")])
    >>> d = logged_decision({"offer_id": "o", "variant": 1, "propensity": 0.5, "reward": 9.0},
    ...                     offer, conversion=ConversionModel())
    >>> len(d.variant_features), d.chosen, d.propensity, d.reward   # 2 bundles x 4 discounts
    (8, 6, 0.5, 9.0)
    >>> round(d.variant_features[d.chosen]["discount"], 2), round(d.expected_rewards[6], 3)
    (0.1, 0.18)
    """
    fields = _fields(record, _RecordFields, "variant/propensity/reward")
    variant, propensity, reward = fields.variant, fields.propensity, fields.reward
    if offer is not None:
        if record.get("offer_id", offer.offer_id) != offer.offer_id:
            raise ValueError(
                f"record of offer {record.get('offer_id')!r} given {offer.offer_id!r}")
        if not 0 <= variant < len(offer.variants):
            raise ValueError(f"variant {variant} out of range for offer {offer.offer_id}")
    if not (math.isfinite(reward) and 0.0 < propensity <= 1.0):
        raise ValueError("reward must be finite and propensity in (0, 1]")
    logged = record.get("decision")
    if logged is not None:
        try:
            decision = (logged if isinstance(logged, OfferDecision)
                        else msgspec.convert(logged, OfferDecision))
        except msgspec.ValidationError as e:
            raise ValueError(f"malformed logged decision: {e}") from e
        if offer is not None and (decision.offer_id != offer.offer_id
                                  or len(decision.shown) != len(offer.variants)):
            raise ValueError(f"logged decision does not fit offer {offer.offer_id}")
        if record.get("offer_id", decision.offer_id) != decision.offer_id:
            raise ValueError(f"record of offer {record.get('offer_id')!r} carries the "
                             f"decision of {decision.offer_id!r}")
        return decision.logged(variant, propensity, reward, offer)  # checks the variant
    if "variant_features" in record and "chosen" in record:
        carried = _fields(record, _CarriedRows, "a decision of the right types")
        if not 0 <= carried.chosen < len(carried.variant_features):
            raise ValueError(f"chosen row {carried.chosen} out of range")
        return LoggedDecision(
            variant_features=carried.variant_features,
            chosen=carried.chosen,
            propensity=propensity,
            reward=reward,
            expected_rewards=carried.expected_rewards,
            support=carried.support,
        )
    if offer is None:
        raise ValueError("a record without its decision is rebuilt from its offer: none given")
    bundles: dict[tuple[str, ...], OfferedBundle] = {}
    for v in offer.variants:
        items = tuple(v.items)
        if items not in bundles:
            ev = v.evidence
            bundles[items] = OfferedBundle(items, ev.support, ev.confidence, ev.lift, v.score)
    shown = offer.variants[variant]
    levels = list(discount_levels)
    if shown.discount_pct not in levels:
        levels.append(shown.discount_pct)
    actions = decision_actions(bundles.values(), [float(d) for d in levels])
    rows_of = action_rows(actions)
    chosen = rows_of[(tuple(shown.items), float(shown.discount_pct))]
    keys = [(tuple(v.items), v.discount_pct) for v in offer.variants if v.probability > 0]
    support = sorted({rows_of[k] for k in keys if k in rows_of})
    ts = fields.ts or offer.ts
    segment = fields.segment or offer.segment
    context = DecisionContext(segment, ts, offer_prices(offer, prices), segments)
    rows = []
    dm_rows: list[float] = []
    for candidate, discount in actions:
        features = variant_features(candidate, discount, context)
        if conversion is not None:
            features[PROPENSITY_FEATURE] = conversion.predict_one(features)
            dm_rows.append(conversion.expected_reward(features))
        rows.append(features)
    return LoggedDecision(
        variant_features=rows,
        chosen=chosen,
        propensity=propensity,
        reward=reward,
        expected_rewards=dm_rows if conversion is not None else None,
        support=support,
    )
