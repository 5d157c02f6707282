"""Prequential evaluation: streamer's own engine against baselines, test-then-train, in
event-time order, in process (no Kafka).

For every order with at least two distinct items, and for every anchor item in it, each method
is asked which partners it offers with the anchor *before* it learns the order; then every
method learns the order (orders of one item are learned too, never scored). ``streamer`` is the
worker's code path: :meth:`Engine.handle_purchase` learns, :meth:`Engine.live_offer` is the
offer published last for the anchor. From that offer a 2-item bundle is its best-scored 2-item
variant and a 3-item bundle its best-scored 3-item variant (the policy's exploration
probabilities are ignored: the evaluation scores what the policy ranks first). Offer expiry is
ignored too (the engine only revises an anchor's offer when the anchor sells, so with the
default one-hour TTL a slow seller's offer would almost always have expired).

Metrics per method, for 2-item bundles (top level) and 3-item bundles (``"triple"``), overall,
per calendar month (UTC) and after the frozen rules' training slice:

- ``bundle_hit_rate``: every offered partner was bought in the order;
- ``pair_hit_rate``: at least one offered partner was bought;
- ``captured_revenue``: revenue (quantity x unit price in the order) of the items bought
  that a hit bundle offered, each item once per order however many of its anchors offered it
  (so never more than the orders' revenue; summed per anchor, an item offered by three anchors
  counted three times), and ``captured_revenue_per_anchor``; meaningless for data without
  prices (every unit price :data:`~streamer.replay.readers.UNPRICED_UNIT_PRICE`), which
  :attr:`EvaluationResult.priced` tells;
- ``coverage``: share of anchor occurrences with an offer of that size.

Every rate's denominator is all anchor occurrences, offered or not: silence is a miss. 95%
intervals are percentile bootstrap intervals that resample **orders** (with all their anchor
occurrences), not occurrences: the anchors of one order share its basket, so their hits are
correlated and resampling them one by one would understate the variance.

>>> from streamer.events import OrderLine, PurchaseEvent
>>> def order(n, items):
...     return PurchaseEvent(event_id=f"e{n}", ts=1_700_000_000_000 + n * 60_000, user_id="u",
...         session_id=f"s{n}", order_id=f"o{n}",
...         items=[OrderLine(item_id=i, quantity=1, unit_price=2.0) for i in items])
>>> events = [order(n, ["tea", "cup"]) for n in range(4)]
>>> result = evaluate(events, dataset="toy", bootstrap=50)
>>> result.orders, result.anchors
(4, 8)
>>> cooc = result.methods["cooc_count"]
>>> cooc.pair.bundle_hit_rate, cooc.pair.coverage   # the first order can never be a hit
(0.75, 0.75)
>>> cooc.pair.captured_revenue   # 3 orders x the 2 items' 2.0, each offered by the other
12.0
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from streamer.engine import Engine, EngineConfig
from streamer.events import ClickEvent, PurchaseEvent
from streamer.replay.baselines import (
    NO_OFFER,
    BundleMethod,
    CoCountBaseline,
    CoLiftBaseline,
    CoOccurrence,
    FrozenRulesBaseline,
    Offer,
    Order,
    PopularityBaseline,
    RandomPartnerBaseline,
)
from streamer.replay.readers import UNPRICED_UNIT_PRICE

if TYPE_CHECKING:
    from streamer.replay.readers import ReaderFormat, ReaderStats

__all__ = [
    "EVALUATION_CONFIG",
    "METHOD_NAMES",
    "BundleMetrics",
    "EvaluationResult",
    "MethodResult",
    "NothingToEvaluate",
    "Progress",
    "StreamerMethod",
    "evaluate",
    "evaluate_file",
    "run_evaluation",
]

#: Called with (events processed, events in total) every few thousand events and at the end.
Progress = Callable[[int, int], None]

#: Methods in report order.
METHOD_NAMES = ("streamer", "popularity", "cooc_count", "cooc_lift", "frozen_rules", "random")

#: The engine as evaluated: the worker's defaults, except that every order may revise an
#: offer (``min_interval_ms=0``: the rate limit protects the offers topic, not accuracy; with it
#: the live offer would depend on the replay's event-time spacing) and the tuned statistics.
EVALUATION_CONFIG = EngineConfig(min_interval_ms=0, min_support=0.0)

# Per (method, bundle size): these four sums per order, in this order.
_BUNDLE, _PAIR, _REVENUE, _OFFERED = range(4)
_METRICS = 4
# Progress about once a second: the clock is read every few events (an Online Retail order of
# hundreds of items takes milliseconds to score, a Taobao click microseconds).
_PROGRESS_EVERY = 64
_PROGRESS_S = 1.0


class StreamerMethod:
    """streamer's engine behind the :class:`~streamer.replay.baselines.BundleMethod` protocol.

    Learns through :meth:`Engine.handle_purchase` (de-duplication, fan-out, statistics, offer
    revision: the worker's path) and offers from :meth:`Engine.live_offer`: its best-scored
    2-item variant and its best-scored 3-item variant.
    """

    name = "streamer"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def learn(self, order: Order) -> None:
        if order.purchase is None:
            raise ValueError("streamer learns from the purchase event; the order has none")
        self.engine.handle_purchase(order.purchase)

    def offer(self, anchor: str, now_ms: int) -> Offer:
        live = self.engine.live_offer(anchor)
        if live is None:
            return NO_OFFER
        best: dict[int, tuple[float, tuple[str, ...]]] = {}
        for variant in live.variants:
            partners = tuple(i for i in variant.items if i != anchor)
            size = len(partners)
            if size in (1, 2) and (size not in best or variant.score > best[size][0]):
                best[size] = (variant.score, partners)
        return Offer(
            best[1][1] if 1 in best else None,
            best[2][1] if 2 in best else None,
        )

    def offers(self, anchors: Sequence[str], now_ms: int) -> list[Offer]:
        return [self.offer(a, now_ms) for a in anchors]

    def describe(self) -> dict[str, Any]:
        return {"engine_config": asdict(self.engine.config), "policy": self.engine.policy.version}


@dataclass(frozen=True, slots=True)
class BundleMetrics:
    """One method's metrics for one bundle size over a set of orders, with 95% intervals."""

    bundle_hit_rate: float
    pair_hit_rate: float
    captured_revenue: float
    captured_revenue_per_anchor: float
    coverage: float
    ci95: dict[str, tuple[float, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_hit_rate": self.bundle_hit_rate,
            "pair_hit_rate": self.pair_hit_rate,
            "captured_revenue": self.captured_revenue,
            "captured_revenue_per_anchor": self.captured_revenue_per_anchor,
            "coverage": self.coverage,
            # null: no interval (no bootstrap replicates); NaN is no JSON
            "ci95": {k: None if math.isnan(lo) else [lo, hi] for k, (lo, hi) in self.ci95.items()},
        }


@dataclass(frozen=True, slots=True)
class GroupMetrics:
    """A method's 2-item (``pair``) and 3-item (``triple``) metrics over one set of orders."""

    label: str
    orders: int
    anchors: int
    pair: BundleMetrics
    triple: BundleMetrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "orders": self.orders,
            "anchors": self.anchors,
            **self.pair.to_dict(),
            "triple": self.triple.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One method: overall metrics, per month, after the rules' training slice, and its
    parameters."""

    name: str
    overall: GroupMetrics
    monthly: list[GroupMetrics]
    after_training: GroupMetrics | None
    params: dict[str, Any]

    @property
    def pair(self) -> BundleMetrics:
        return self.overall.pair

    @property
    def triple(self) -> BundleMetrics:
        return self.overall.triple

    def to_dict(self) -> dict[str, Any]:
        out = self.overall.to_dict()
        del out["label"], out["orders"], out["anchors"]
        out["monthly"] = [{"month": g.label, **_without_label(g.to_dict())} for g in self.monthly]
        out["after_training_slice"] = (
            None if self.after_training is None else _without_label(self.after_training.to_dict())
        )
        out["params"] = self.params
        return out


def _without_label(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    d.pop("label", None)
    return d


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """Everything one evaluation run measured; :meth:`to_json` is the ``--json`` file."""

    dataset: str
    orders: int
    anchors: int
    learned_orders: int
    events: int
    rules_training_orders: int
    bootstrap: int
    seconds: float
    methods: dict[str, MethodResult] = field(default_factory=dict)
    #: The reader's cap on distinct items per order (None: whole orders, the protocol).
    max_order_lines: int | None = None
    #: Whether any order line has a price other than the readers' stand-in for none (Taobao
    #: and bakery data have no prices): without, revenue counts units, not money.
    priced: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict: ``{"dataset", "orders", "methods": {name: {...}}, ...}``."""
        return {
            "dataset": self.dataset,
            "orders": self.orders,
            "anchors": self.anchors,
            "learned_orders": self.learned_orders,
            "events": self.events,
            "priced": self.priced,
            "protocol": {
                "scored": "orders with >= 2 distinct items; every distinct item as anchor",
                "denominator": "all anchor occurrences (no offer = miss)",
                "ci95": f"percentile bootstrap over orders, {self.bootstrap} replicates",
                "pair_bundle": "best-scored 2-item variant / best partner",
                "triple_bundle": "best-scored 3-item variant / two best partners",
                "rules_training_orders": self.rules_training_orders,
                "max_order_lines": self.max_order_lines,
            },
            "seconds": round(self.seconds, 3),
            "methods": {name: m.to_dict() for name, m in self.methods.items()},
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """The result as a JSON document (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)


def default_methods(
    *,
    engine: Engine,
    train_orders: int,
    lift_min_support: int = 3,
    seed: int = 0,
) -> list[BundleMethod]:
    """streamer and the five baselines, the count-based ones sharing one co-count table."""
    counts = CoOccurrence()
    return [
        StreamerMethod(engine),
        PopularityBaseline(counts),
        CoCountBaseline(counts),
        CoLiftBaseline(counts, min_support=lift_min_support),
        FrozenRulesBaseline(train_orders=train_orders),
        RandomPartnerBaseline(counts, seed=seed),
    ]


def evaluate(
    events: Iterable[ClickEvent | PurchaseEvent],
    *,
    dataset: str,
    config: EngineConfig | None = None,
    engine: Engine | None = None,
    methods: Sequence[BundleMethod] | None = None,
    rules_share: float = 0.1,
    lift_min_support: int = 3,
    seed: int = 0,
    bootstrap: int = 1000,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Evaluate streamer and the baselines prequentially on ``events`` (in event-time order).

    Args:
        events: clicks and purchases in event-time order (``read_events`` yields them so);
            materialised once, to know where the first ``rules_share`` of orders ends.
            A purchase whose ``event_id`` was seen before is skipped (as the engine would).
        dataset: name reported in the result.
        config: the engine's configuration (default :data:`EVALUATION_CONFIG`); ignored when
            ``engine`` is given (e.g. an engine with other statistics, for experiments).
        methods: replaces the default methods (streamer + five baselines); names must be unique.
        rules_share: share of the orders (all purchases, in time order) the frozen rules are
            mined on.
        lift_min_support: ``cooc_lift``'s minimum co-count.
        seed: seeds the random baseline and the bootstrap.
        bootstrap: bootstrap replicates for the intervals.
        progress: called with (events done, events total) now and then.

    Clicks go to :meth:`Engine.handle_click` (the worker's path: they feed the co-view and
    co-cart signals when ``config`` gives them a weight; by default they teach nothing).
    Pure computation, CPU-bound; owns nothing after it returns.
    """
    started = time.perf_counter()
    stream = list(events)
    total_events = len(stream)
    if progress is not None:  # the total, as soon as it is known (reading a file takes a while)
        progress(0, total_events)
    next_progress = time.monotonic() + _PROGRESS_S
    purchases = sum(isinstance(e, PurchaseEvent) for e in stream)
    train_orders = max(1, round(purchases * rules_share))
    if engine is None:
        engine = Engine.in_memory(config or EVALUATION_CONFIG)
    if methods is None:
        methods = default_methods(
            engine=engine, train_orders=train_orders, lift_min_support=lift_min_support, seed=seed
        )
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    width = len(methods) * 2 * _METRICS

    rows: list[list[float]] = []
    anchors_per_order: list[int] = []
    months: list[str] = []
    seqs: list[int] = []
    seen: set[str] = set()
    priced = False
    seq = 0
    for done, event in enumerate(stream, 1):
        if progress is not None and done % _PROGRESS_EVERY == 0 and (
                time.monotonic() >= next_progress):
            progress(done, total_events)
            next_progress = time.monotonic() + _PROGRESS_S
        if isinstance(event, ClickEvent):
            engine.handle_click(event)
            continue
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        priced = priced or any(line.unit_price != UNPRICED_UNIT_PRICE for line in event.items)
        order = _order(seq, event)
        if len(order.items) >= 2:
            rows.append(_score(methods, order, width))
            anchors_per_order.append(len(order.items))
            months.append(_month(order.ts))
            seqs.append(seq)
        for method in methods:
            method.learn(order)
        seq += 1
    if progress is not None:
        progress(total_events, total_events)

    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
    anchors = np.asarray(anchors_per_order, dtype=np.float64)
    rng = np.random.default_rng(seed)
    groups: dict[str, npt.NDArray[np.intp]] = {"overall": np.arange(len(rows))}
    month_of = np.asarray(months)
    for month in sorted(set(months)):
        groups[month] = np.flatnonzero(month_of == month)
    after = np.flatnonzero(np.asarray(seqs, dtype=np.int64) >= train_orders)
    summaries = {
        label: _summarise(label, values[idx], anchors[idx], len(methods), bootstrap, rng)
        for label, idx in [*groups.items(), ("after_training_slice", after)]
    }
    results = {}
    for m, method in enumerate(methods):
        results[method.name] = MethodResult(
            name=method.name,
            overall=summaries["overall"][m],
            monthly=[summaries[label][m] for label in groups if label != "overall"],
            after_training=summaries["after_training_slice"][m] if len(after) else None,
            params=method.describe(),
        )
    return EvaluationResult(
        dataset=dataset,
        orders=len(rows),
        anchors=int(anchors.sum()),
        learned_orders=seq,
        events=total_events,
        rules_training_orders=train_orders,
        bootstrap=bootstrap,
        seconds=time.perf_counter() - started,
        methods=results,
        priced=priced,
    )


def _order(seq: int, purchase: PurchaseEvent) -> Order:
    revenue: dict[str, float] = {}
    for line in purchase.items:
        revenue[line.item_id] = revenue.get(line.item_id, 0.0) + line.quantity * line.unit_price
    return Order(seq, purchase.order_id, purchase.ts, tuple(revenue), revenue, purchase)


def _month(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000.0, UTC).strftime("%Y-%m")


def _score(methods: Sequence[BundleMethod], order: Order, width: int) -> list[float]:
    """This order's sums per (method, size, metric), scored before anyone learns it."""
    row = [0.0] * width
    bought = set(order.items)
    revenue = order.revenue
    for m, method in enumerate(methods):
        captured: tuple[set[str], set[str]] = (set(), set())  # per size: items hits offered
        for offer in method.offers(order.items, order.ts):
            for size, partners in enumerate(offer):
                if partners is None:
                    continue
                base = (m * 2 + size) * _METRICS
                row[base + _OFFERED] += 1.0
                got = sum(p in bought for p in partners)
                if got:
                    row[base + _PAIR] += 1.0
                    if got == len(partners):
                        row[base + _BUNDLE] += 1.0
                        captured[size].update(partners)
        for size, items in enumerate(captured):
            row[(m * 2 + size) * _METRICS + _REVENUE] = sum(revenue[p] for p in items)
    return row


def _summarise(
    label: str,
    values: npt.NDArray[np.float64],
    anchors: npt.NDArray[np.float64],
    n_methods: int,
    replicates: int,
    rng: np.random.Generator,
) -> list[GroupMetrics]:
    """Point estimates and percentile-bootstrap intervals (orders resampled) per method."""
    n = len(anchors)
    total_anchors = float(anchors.sum())
    sums = values.sum(axis=0)
    lo, hi = _bootstrap(values, anchors, replicates, rng)
    out = []
    for m in range(n_methods):
        sizes = []
        for size in range(2):
            base = (m * 2 + size) * _METRICS
            point = _ratios(sums[base : base + _METRICS], total_anchors)
            ci = {key: (float(lo[base + k]), float(hi[base + k])) for k, key in enumerate(_KEYS)}
            # The bootstrap's second half of columns is every sum per anchor.
            per_anchor = values.shape[1] + base + _REVENUE
            ci["captured_revenue_per_anchor"] = (float(lo[per_anchor]), float(hi[per_anchor]))
            sizes.append(BundleMetrics(**point, ci95=ci))
        out.append(GroupMetrics(label, n, int(total_anchors), sizes[0], sizes[1]))
    return out


_KEYS = ("bundle_hit_rate", "pair_hit_rate", "captured_revenue", "coverage")


def _ratios(sums: npt.NDArray[np.float64], anchors: float) -> dict[str, float]:
    per = 1.0 / anchors if anchors else 0.0
    return {
        "bundle_hit_rate": float(sums[_BUNDLE] * per),
        "pair_hit_rate": float(sums[_PAIR] * per),
        "captured_revenue": float(sums[_REVENUE]),
        "captured_revenue_per_anchor": float(sums[_REVENUE] * per),
        "coverage": float(sums[_OFFERED] * per),
    }


def _bootstrap(
    values: npt.NDArray[np.float64],
    anchors: npt.NDArray[np.float64],
    replicates: int,
    rng: np.random.Generator,
    chunk: int = 200,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """2.5% and 97.5% percentiles per column, resampling whole orders (rows) with replacement.

    Columns come back as: rates over anchors (revenue columns as totals), then every column
    again divided by anchors (used for revenue per anchor). One replicate is a vector of
    resampling counts per order, so a chunk of replicates is one matrix product.
    """
    n, k = values.shape
    if replicates <= 0:  # no interval, rather than [0, 0] around a point outside it
        none = np.full(2 * k, np.nan)
        return none, none
    if n == 0:
        zeros = np.zeros(2 * k)
        return zeros, zeros
    stats = np.empty((replicates, 2 * k))
    revenue_cols = np.zeros(k, dtype=bool)
    revenue_cols[_REVENUE::_METRICS] = True
    for start in range(0, replicates, chunk):
        c = min(chunk, replicates - start)
        draws = rng.integers(0, n, size=(c, n))
        weights = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)
        sums = weights @ values
        per_anchor = sums / np.maximum(weights @ anchors, 1.0)[:, None]
        stats[start : start + c, :k] = np.where(revenue_cols, sums, per_anchor)
        stats[start : start + c, k:] = per_anchor
    lo, hi = np.percentile(stats, [2.5, 97.5], axis=0)
    return lo, hi


# -- file-level conveniences for the CLI -------------------------------------------------------


class NothingToEvaluate(ValueError):
    """The events hold no order of two or more distinct items: no rate can be computed, and a
    table or plot of zeros would read as a method that never hits."""


def evaluate_file(
    path: str | Path,
    fmt: ReaderFormat,
    *,
    limit: int | None = None,
    config: EngineConfig | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
    max_order_lines: int | None = None,
    stats: ReaderStats | None = None,
) -> EvaluationResult:
    """:func:`evaluate` on a file read by ``streamer.replay.readers.read_events``; the dataset
    is named after the file. Raises whatever the reader raises for a bad file or format.
    ``stats``, if given, is filled in by the reader.

    Orders are read whole (``max_order_lines=None``), not cut to the wire schema's 200 lines:
    the protocol scores every anchor of every order against everything bought with it, and
    the engine runs in process here, so no wire limit applies. (Cutting them, as ``replay``
    must, drops 7% of UCI Online Retail's anchor occurrences, all from its largest baskets, and
    lowers every method's hit rate: ``cooc_count`` 2-item 0.433 -> 0.397.)"""
    from streamer.replay.readers import read_events

    result = evaluate(
        read_events(path, fmt, limit=limit, max_order_lines=max_order_lines, stats=stats),
        dataset=Path(path).name,
        config=config,
        bootstrap=bootstrap,
        seed=seed,
        progress=progress,
    )
    return replace(result, max_order_lines=max_order_lines)


def run_evaluation(
    path: str | Path,
    fmt: ReaderFormat,
    *,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    progress: Progress | None = None,
    limit: int | None = None,
    config: EngineConfig | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    max_order_lines: int | None = None,
    stats: ReaderStats | None = None,
) -> EvaluationResult:
    """What ``streamer evaluate PATH --format F --json J --plot P`` does, minus the printing:
    evaluate the file, write the JSON (``json_path``) and the monthly hit-rate plot
    (``plot_path``, PNG) when asked, return the result (render it with
    :func:`streamer.replay.report.result_table`). A file without an order of two or more
    items raises :class:`NothingToEvaluate` and writes neither."""
    result = evaluate_file(
        path,
        fmt,
        limit=limit,
        config=config,
        bootstrap=bootstrap,
        seed=seed,
        progress=progress,
        max_order_lines=max_order_lines,
        stats=stats,
    )
    if result.orders == 0:
        raise NothingToEvaluate(f"{path}: no order of two or more items among its "
                                f"{result.learned_orders:,} orders: nothing to evaluate")
    if json_path is not None:
        Path(json_path).write_text(result.to_json() + "\n")
    if plot_path is not None:
        from streamer.replay.report import plot_hit_rates

        plot_hit_rates(result, plot_path)
    return result


def with_engine_config(**changes: Any) -> EngineConfig:
    """:data:`EVALUATION_CONFIG` with some fields changed (for experiments and the CLI)."""
    return replace(EVALUATION_CONFIG, **changes)
