"""Crash-consistency harness: replay purchases through real workers, SIGKILL them at seeded
random points, restart them, and compare their co-purchase state with an uninterrupted run.

The uninterrupted run is the engine driven in process (the replay driver, design.md: "same
suite, two drivers"): the same events through :meth:`Engine.handle_purchase`. Every event has
the same event time, so every forward-decay value is an exact integer count (the landmark is
that time, every increment is exactly 1.0) and the comparison is exact: a basket learned twice
shows as +1, a lost one as -1, whatever the order the workers saw the events in.

Some sessions also cart items (``add_to_cart``), and the co-cart signal is on at the weight
of a purchase (:func:`fresh_settings`), so the baskets the clicks agent derives from sessions
(``Engine.session_baskets``) must be learned exactly once too; the reference gets the same
clicks through :meth:`Engine.handle_click`.

Compared per anchor: its order count and its partner co-counts, the order total, and the
``item-counts`` table (each record's count mirrored there, in another changelog). Triples
are left out on purpose: whether an order bumps a triple depends on which partners were
already strong at that moment, so it depends on arrival order, which differs between any two
runs (crashed or not).

"Settled" is read from the broker, not guessed: the consumer group's committed offsets equal
the end offsets of ``purchases`` and of the item-baskets repartition topic. faust flushes its
producer (baskets, changelogs) before it commits, so a committed purchase's baskets are on the
broker, and a committed basket's table writes are in the worker's memory.

The reward ledger is compared too. Besides the purchases, the events are offer impressions
and offer clicks (topic ``clicks``) of synthetic offers the harness publishes first (two policy
versions), in the purchases' sessions; some purchases name the offer, some buy its bundle. All
happen at the same event time, so no impression closes while the trials run (the attribution
window is 30 min of event time); once they are done, one ``view`` per clicks partition, a
window later, closes every impression. The closed impressions go to ``feedback`` and, through
the ``reward-outcomes`` topic, to the reward ledger. Compared with the in-process reference
(:class:`~streamer.app.reward_tracking.RewardTracker` over dicts, the same events): every
impression's outcome on ``feedback`` (records deduplicated by impression id: the topic is
at-least-once, a duplicate must be identical), every window of the ledger (per version, per
version and anchor, per version and segment: impressions, offer clicks, conversions, direct
conversions, revenue, direct revenue, mean reward), open (``/state/rewards/``; the one window
size, 1 h, stays open) or published to ``rewards``, and the totals per policy version.

Where a worker is killed. Polled counters (purchases consumed, outcomes published) put the
kill anywhere, but only a few percent of such kills land inside a write-back, after some of a
flush's changelog records reached the broker and before the rest did or before the offset
commit, where a defect that tears state shows. So some kills are *torn write-backs*
(:data:`TORN_WRITE`, a ``sitecustomize`` on the worker's path, armed per kill): at the
``write``-th write-back with records of at least two changelog topics (the first, unless
``--torn-write``), the worker sends a seeded subset of those topics (all of them: a
write-back complete but not committed), waits until the broker has them, and SIGKILLs itself.
``--kill`` picks the mode: ``mixed`` (the default; in the single-worker run every other
chunk's kill and the one while closing are torn, in the rebalance run chunk 1's), ``torn`` or
``polled``. The trial line says which topics went out.

Run more trials than the test does with ``python -m tests.crash_harness --trials 20``;
``--single-runs 5`` makes five single-worker runs (five kills while closing impressions),
``--rebalance --rebalance-runs 5`` adds five 2-worker runs, ``--no-single`` skips the
single-worker trials. A run whose group does not settle in time sends ``SIGUSR2`` to its live
workers first (they log their partitions' consumer state and their tasks' stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from streamer.app.broker import EmbeddedBroker, free_port, on_embedded
from streamer.app.demo import WorkerProcess
from streamer.app.factory import engine_config
from streamer.app.kafka import key_partition
from streamer.app.reward_tracking import FeedbackRecord, RewardTracker
from streamer.app.rewards_agents import reward_config
from streamer.copurchase import TOTAL_KEY
from streamer.engine import Engine
from streamer.events import BundleOffer, ClickEvent, OrderLine, PurchaseEvent
from streamer.events.models import Evidence, Variant
from streamer.rewards import ImpressionOutcome, WindowAggregate
from streamer.settings import Settings
from tests.conftest import wait_for

BASKETS_SUFFIX = "-item-baskets"
OUTCOMES_SUFFIX = "-reward-outcomes"


# -- events and the reference state ---------------------------------------------------------
def make_orders(n: int, *, seed: int, catalogue: int = 120, ts_ms: int | None = None,
                min_items: int = 2, max_items: int = 6) -> list[PurchaseEvent]:
    """``n`` purchases of ``min_items..max_items`` distinct items from a skewed catalogue, all
    at one event time (so every count is an exact integer; see the module doc)."""
    rng = random.Random(seed)
    ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
    items = [f"i{k:03d}" for k in range(catalogue)]
    weights = [1.0 / (k + 1) ** 0.8 for k in range(catalogue)]  # a few best sellers
    prices = {i: round(1.0 + (k % 17) * 0.75, 2) for k, i in enumerate(items)}
    orders = []
    for k in range(n):
        size = rng.randint(min_items, max_items)
        chosen: dict[str, None] = {}
        while len(chosen) < size:
            chosen[rng.choices(items, weights)[0]] = None
        orders.append(PurchaseEvent(
            event_id=f"crash-{seed}-{k}", ts=ts, user_id=f"u{k % 97}", session_id=f"s{k}",
            order_id=f"o{k}",
            items=[OrderLine(item_id=i, quantity=1, unit_price=prices[i]) for i in chosen]))
    return orders


@dataclass(frozen=True)
class CoPurchaseState:
    """The comparable part of the co-purchase state: raw forward values at one landmark."""

    orders: float
    counts: dict[str, float]
    partners: dict[str, dict[str, float]]
    #: The ``item-counts`` table: each record's count mirrored (the order total's included).
    item_counts: dict[str, float] = field(default_factory=dict)


def reference_state(settings: Settings, orders: Sequence[PurchaseEvent],
                    clicks: Sequence[ClickEvent] = ()) -> CoPurchaseState:
    """The state an uninterrupted run ends in: the engine driven in process (the clicks feed
    the co-cart signal, which :func:`fresh_settings` turns on)."""
    engine = Engine.in_memory(engine_config(settings))
    for click in clicks:
        engine.handle_click(click)
    for order in orders:
        engine.handle_purchase(order)
    return state_from_dump({"orders": msgspec.to_builtins(engine.state.counts.get(TOTAL_KEY)),
                            "items": {a: msgspec.to_builtins(r.stats)
                                      for a, r in engine.state.items.items()
                                      if r.stats is not None},
                            "counts": {a: msgspec.to_builtins(c)
                                       for a, c in engine.state.counts.items()}})


def state_from_dump(dump: dict[str, Any]) -> CoPurchaseState:
    """Parse a ``/state/items/`` body (or the union of several)."""
    orders = dump.get("orders")
    counts: dict[str, float] = {}
    partners: dict[str, dict[str, float]] = {}
    for anchor, stats in dump["items"].items():
        # ItemStats encodes as [landmark_ms, count, partners, partner_offset, triples, ...].
        counts[anchor] = float(stats[1])
        partners[anchor] = {p: float(c) for p, c in stats[2].items()}
    # Decayed encodes as [value, landmark_ms].
    item_counts = {anchor: float(c[0]) for anchor, c in dump["counts"].items()}
    return CoPurchaseState(float(orders[0]) if orders else 0.0, counts, partners, item_counts)


@dataclass
class StateDiff:
    """How far a worker's state is from the reference, in learned baskets."""

    lost: float = 0.0
    doubled: float = 0.0
    anchors_off: list[str] = field(default_factory=list)
    #: Anchors whose ``item-counts`` value is not their reference count: ``{anchor: (want,
    #: got)}`` (None: absent). Kept apart from lost and doubled, which are learned baskets.
    counts_off: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and not self.counts_off


def compare(expected: CoPurchaseState, actual: CoPurchaseState) -> StateDiff:
    """Count missing (lost) and extra (doubled) increments: anchor counts, co-counts, orders;
    and list the ``item-counts`` values that differ."""
    diff = StateDiff()

    def account(want: float, got: float) -> bool:
        delta = got - want
        if delta > 0:
            diff.doubled += delta
        elif delta < 0:
            diff.lost -= delta
        return delta != 0

    account(expected.orders, actual.orders)
    for anchor in sorted(expected.counts.keys() | actual.counts.keys()):
        off = account(expected.counts.get(anchor, 0.0), actual.counts.get(anchor, 0.0))
        want, got = expected.partners.get(anchor, {}), actual.partners.get(anchor, {})
        for partner in want.keys() | got.keys():
            off = account(want.get(partner, 0.0), got.get(partner, 0.0)) or off
        if off:
            diff.anchors_off.append(anchor)
    for anchor in sorted(expected.item_counts.keys() | actual.item_counts.keys()):
        want_count, got_count = expected.item_counts.get(anchor), actual.item_counts.get(anchor)
        if want_count != got_count:
            diff.counts_off[anchor] = (want_count, got_count)
    return diff


# -- offers, impressions and the reward ledger ----------------------------------------------
def event_time(now_ms: int | None = None) -> int:
    """The one event time of a run: just after the start of the current hour, so the ledger's
    one window (1 h, see :func:`fresh_settings`) holds every impression."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    return now - now % 3_600_000 + 1_000


def make_offers(ts: int, n: int = 6) -> list[BundleOffer]:
    """``n`` offers on the best sellers, alternating between two policy versions."""
    ev = Evidence(support=5.0, confidence=0.5, lift=2.0)
    offers = []
    for j in range(n):
        anchor = f"i{j:03d}"
        variants = [
            Variant(items=[anchor, f"i{j + 1:03d}"], discount_pct=10.0, bundle_price=5.0,
                    probability=0.6, score=1.0, evidence=ev),
            Variant(items=[anchor, f"i{j + 2:03d}", f"i{j + 3:03d}"], discount_pct=15.0,
                    bundle_price=8.0, probability=0.4, score=0.5, evidence=ev)]
        offers.append(BundleOffer(offer_id=f"crash-offer-{j}", ts=ts, anchor_item_id=anchor,
                                  segment="all", policy_version=f"crash-v{j % 2}",
                                  variants=variants, expires_at=ts + 86_400_000))
    return offers


def with_offer_activity(orders: Sequence[PurchaseEvent], offers: Sequence[BundleOffer], *,
                        seed: int) -> tuple[list[PurchaseEvent], list[list[ClickEvent]]]:
    """The orders (some now naming an offer they went through) and, per order, the clicks of
    its session: an offer impression in about half of them, sometimes an offer click."""
    rng = random.Random(seed)
    out, clicks = [], []
    for order in orders:
        session: list[ClickEvent] = []
        if rng.random() < 0.4:  # carts: co-cart baskets (some bought, some not)
            for j, item in enumerate(dict.fromkeys(
                    rng.choice([*(line.item_id for line in order.items), "i000", "i001"])
                    for _ in range(rng.randint(1, 4)))):
                session.append(ClickEvent(event_id=f"{order.event_id}-cart-{j}", ts=order.ts,
                                          user_id=order.user_id, session_id=order.session_id,
                                          item_id=item, kind="add_to_cart"))
        if rng.random() < 0.5:
            offer = rng.choice(offers)
            variant = rng.randrange(len(offer.variants))
            common = {"ts": order.ts, "user_id": order.user_id, "session_id": order.session_id,
                      "item_id": offer.anchor_item_id, "offer_id": offer.offer_id}
            session.append(ClickEvent(event_id=f"{order.event_id}-imp", kind="offer_impression",
                                      variant=variant,
                                      propensity=offer.variants[variant].probability, **common))
            if rng.random() < 0.4:
                session.append(ClickEvent(event_id=f"{order.event_id}-click", kind="offer_click",
                                          **common))
            if rng.random() < 0.3:
                order = msgspec.structs.replace(order, offer_id=offer.offer_id)
        out.append(order)
        clicks.append(session)
    return out, clicks


def closing_events(settings: Settings, ts: int, tag: str) -> list[ClickEvent]:
    """Views on every clicks partition, late enough in event time to close every impression
    at ``ts`` (watermark = newest event - allowed lateness >= ts + attribution window).

    Each partition gets a chain of views (one session, in order) stepping event time forward
    by half of ``rewards.max_event_ahead_s`` at most: a single view that far ahead would be
    refused as ``too_early`` whenever it is ahead of wall time too (early in the hour, see
    :func:`event_time`); half, so a view overtaking the one before it still gets through."""
    config = reward_config(settings)
    close_ts = ts + config.window_ms + config.allowed_lateness_ms + 1_000
    step = max(1, config.max_ahead_ms // 2) if config.max_ahead_ms else close_ts - ts
    stamps = [*range(ts + step, close_ts, step), close_ts]
    partitions = settings.topics.partitions
    sessions: dict[int, str] = {}
    k = 0
    while len(sessions) < partitions:
        session = f"close-{tag}-{k}"
        sessions.setdefault(key_partition(session, partitions), session)
        k += 1
    return [ClickEvent(event_id=f"{session}-{n}", ts=stamp, user_id="closer",
                       session_id=session, item_id="i000", kind="view")
            for session in sessions.values() for n, stamp in enumerate(stamps)]


def outcome_key(o: ImpressionOutcome) -> tuple[Any, ...]:
    """What must be equal between runs (not ``attributed_at``, a clock reading)."""
    return (o.policy_version, o.offer_id, o.variant, o.clicked, o.converted,
            round(o.revenue, 6), round(o.reward, 6), tuple(sorted(o.purchase_ids)), o.late)


#: Ledger totals of one policy version: impressions, offer clicks, conversions, revenue.
Totals = tuple[int, int, int, float]
#: A reward window: policy version, anchor, segment (None: all), start, end.
WindowKey = tuple[str, str | None, str | None, int, int]
#: What a window counted: impressions, offer clicks, conversions, direct conversions (the
#: integers), then revenue, direct revenue and the mean reward (sums of floats: compared
#: within rounding, their order of addition differs between runs).
WindowValues = tuple[int, int, int, int, float, float, float]


@dataclass
class LedgerState:
    """Outcomes on ``feedback`` by impression id, and the ledger's windows and their totals
    per version."""

    outcomes: dict[str, tuple[Any, ...]]
    windows: dict[WindowKey, WindowValues]
    duplicates: int = 0  # feedback records repeating an impression (at-least-once)
    conflicting: list[str] = field(default_factory=list)  # repeated with another outcome

    @property
    def totals(self) -> dict[str, Totals]:
        """Per version, over its version-level windows (one spec: see :func:`fresh_settings`)."""
        totals: dict[str, list[float]] = {}
        for (version, anchor, segment, _, _), values in self.windows.items():
            if anchor is None and segment is None:
                acc = totals.setdefault(version, [0, 0, 0, 0.0])
                for i, v in enumerate((*values[:3], values[4])):
                    acc[i] += v
        return {v: (int(t[0]), int(t[1]), int(t[2]), round(t[3], 6)) for v, t in totals.items()}


def ledger_windows(open_windows: Sequence[WindowAggregate],
                   published: Sequence[dict[str, Any]]) -> dict[WindowKey, WindowValues]:
    """Every window of every group (version; with ``by_anchor``, ``by_segment``: version and
    anchor, version and segment), open or published (deduplicated by window; an open window
    wins over a publication of the same window, a later publication over an earlier one)."""
    windows: dict[WindowKey, WindowValues] = {}
    for w in published:
        windows[(w["policy_version"], w.get("anchor_item_id"), w.get("segment"),
                 w["window_start"], w["window_end"])] = (
            w["impressions"], w["offer_clicks"], w["conversions"], w["direct_conversions"],
            w["revenue"], w["direct_revenue"], w["reward_rate"])
    for a in open_windows:
        windows[(a.policy_version, a.anchor_item_id, a.segment, a.start, a.end)] = (
            a.impressions, a.offer_clicks, a.conversions, a.direct_conversions, a.revenue,
            a.direct_revenue, a.rewards.mean)
    return windows


def same_window(want: WindowValues, got: WindowValues) -> bool:
    """Counts equal, sums of floats equal within rounding."""
    return want[:4] == got[:4] and all(math.isclose(w, g, rel_tol=1e-9, abs_tol=1e-9)
                                       for w, g in zip(want[4:], got[4:], strict=True))


def reference_ledger(settings: Settings, offers: Sequence[BundleOffer],
                     orders: Sequence[PurchaseEvent], clicks: Sequence[ClickEvent],
                     closing: Sequence[ClickEvent]) -> LedgerState:
    """The ledger an uninterrupted run ends in: the worker's tracker over dicts."""
    by_id = {o.offer_id: o for o in offers}
    tracker = RewardTracker({}, {}, {}, {}, offers=by_id.get, config=reward_config(settings))
    n = settings.topics.partitions
    outcomes: list[ImpressionOutcome] = []
    events: list[ClickEvent | PurchaseEvent] = [*clicks, *orders, *closing]
    for event in events:
        outcomes += tracker.observe(event, partition=key_partition(event.session_id, n),
                                    wall_ms=0)
    for o in outcomes:
        assert o.policy_version is not None
        tracker.record(o, partition=key_partition(o.policy_version, n), wall_ms=0)
    return LedgerState({o.impression_id: outcome_key(o) for o in outcomes},
                       ledger_windows([w for _, w in tracker.open_windows()], []))


@dataclass
class LedgerDiff:
    """How the reward ledger of a run differs from the reference."""

    lost: list[str] = field(default_factory=list)  # impressions missing from feedback
    extra: list[str] = field(default_factory=list)  # feedback for impressions never made
    changed: list[str] = field(default_factory=list)  # another outcome than the reference's
    conflicting: list[str] = field(default_factory=list)  # published twice, differently
    duplicates: int = 0  # identical repeats on feedback (allowed: at-least-once topic)
    totals_off: dict[str, tuple[Totals | None, Totals | None]] = field(default_factory=dict)
    #: Windows (any group) that differ: ``{window: (want, got)}`` (None: absent).
    windows_off: dict[WindowKey, tuple[WindowValues | None, WindowValues | None]] = field(
        default_factory=dict)

    @property
    def equal(self) -> bool:
        return not (self.lost or self.extra or self.changed or self.conflicting
                    or self.totals_off or self.windows_off)

    def line(self) -> str:
        off = ", ".join(f"{v}: want {w} got {g}" for v, (w, g) in sorted(self.totals_off.items()))
        return (f"ledger equal={self.equal} lost={len(self.lost)} extra={len(self.extra)} "
                f"changed={len(self.changed)} conflicting={len(self.conflicting)} "
                f"duplicate records={self.duplicates} windows off={len(self.windows_off)}"
                + (f"; totals off: {off}" if off else "")
                + (f"; e.g. window {next(iter(self.windows_off.items()))}"
                   if self.windows_off else "")
                + (f"; e.g. lost {self.lost[:3]}" if self.lost else "")
                + (f"; e.g. changed {self.changed[:3]}" if self.changed else ""))


def compare_ledger(expected: LedgerState, actual: LedgerState) -> LedgerDiff:
    want, got = expected.outcomes, actual.outcomes
    diff = LedgerDiff(
        lost=sorted(want.keys() - got.keys()), extra=sorted(got.keys() - want.keys()),
        changed=sorted(i for i in want.keys() & got.keys() if want[i] != got[i]),
        conflicting=actual.conflicting, duplicates=actual.duplicates)
    for version in expected.totals.keys() | actual.totals.keys():
        w, g = expected.totals.get(version), actual.totals.get(version)
        if w != g:
            diff.totals_off[version] = (w, g)
    for key in sorted(expected.windows.keys() | actual.windows.keys(), key=repr):
        want_w, got_w = expected.windows.get(key), actual.windows.get(key)
        if want_w is None or got_w is None or not same_window(want_w, got_w):
            diff.windows_off[key] = (want_w, got_w)
    return diff


# -- workers ----------------------------------------------------------------------------------
#: The torn write-back (see the module doc): a ``sitecustomize`` that wraps the sender of the
#: worker's write-backs (``WriteBuffer.write`` hands each flush's records to it in one call).
#: Inert until the file named by ``STREAMER_TEST_TORN_ARM`` exists; it holds ``write seed``.
TORN_WRITE = '''
import asyncio
import os
import random
import signal
import sys

import streamer.app.tables

_send = streamer.app.tables.ChangelogSender.send
_arm = os.environ["STREAMER_TEST_TORN_ARM"]
_writes = [0]


async def send(self, records):
    topics = list(dict.fromkeys(r[0] for r in records if r[0].endswith("-changelog")))
    if len(topics) < 2 or not os.path.exists(_arm):
        return await _send(self, records)
    with open(_arm) as f:
        at, seed = map(int, f.read().split())
    _writes[0] += 1
    if _writes[0] < at:
        return await _send(self, records)
    rng = random.Random(seed)
    first = rng.sample(topics, rng.randint(1, len(topics)))
    await asyncio.wait(await _send(self, [r for r in records if r[0] in first]))
    print(f"torn write-back #{at}: sent {len(first)} of {len(topics)} changelog topics "
          f"({', '.join(first)}), delivered; SIGKILL", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


streamer.app.tables.ChangelogSender.send = send
'''


@dataclass(frozen=True)
class TornWrite:
    """Where a torn kill lands: the ``write``-th write-back (with records of two changelog
    topics or more) after the worker was armed; ``seed`` picks the topics sent."""

    write: int
    seed: int

    @classmethod
    def draw(cls, rng: random.Random, write: int = 1) -> TornWrite:
        """At write-back ``write``; the topics sent seeded by ``rng``. Why the first by
        default: a chunk of 150 purchases, or the outcomes of closing its impressions, is
        learned within one commit interval, so one write-back carries it (8 of 8 kills drawn
        at the second found none and tore nothing: :func:`kill_torn`); ``--torn-write``
        picks a later one for longer chunks."""
        return cls(write, rng.randrange(1 << 31))


def worker_settings(base: Settings, index: int, data_root: Path) -> Settings:
    """``base`` for the ``index``-th worker of a group: own web port and data dir."""
    worker = base.worker.model_copy(update={"web_port": free_port(),
                                            "data_dir": str(data_root / f"data-{index}")})
    return base.model_copy(update={"worker": worker})


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = dict(os.environ)
    for section, values in settings.model_dump(mode="json").items():
        for key, value in values.items():
            if value is not None:
                env[f"STREAMER__{section.upper()}__{key.upper()}"] = str(value)
    return env


def get_json(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET ``url`` as JSON; ``{}`` when the worker does not answer (starting, gone)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            data: dict[str, Any] = json.load(r)
            return data
    except (OSError, ValueError):
        return {}


class Worker:
    """A ``streamer worker`` process of a crash trial."""

    def __init__(self, settings: Settings, log_path: Path,
                 env: dict[str, str] | None = None, *, torn: bool = False) -> None:
        """Start the worker; ``env`` (optional) is added to its environment. ``torn``: with
        :data:`TORN_WRITE` on its path, so :meth:`arm_torn` can make it kill itself."""
        self.settings = settings
        self.torn = torn
        self.url = f"http://127.0.0.1:{settings.worker.web_port}"
        self.arm_path = log_path.with_suffix(".torn")
        self.arm_path.unlink(missing_ok=True)  # started disarmed, whatever ran here before
        env = dict(env or {})
        if torn:
            hook = log_path.parent / "torn-hook"
            hook.mkdir(exist_ok=True)
            (hook / "sitecustomize.py").write_text(TORN_WRITE)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
            env["STREAMER_TEST_TORN_ARM"] = str(self.arm_path)
        self.process = WorkerProcess(settings_env(settings) | env, log_path)

    def arm_torn(self, torn: TornWrite) -> None:
        """From now on, the worker kills itself at ``torn`` (it must run :data:`TORN_WRITE`).
        Written whole then renamed: the hook never reads half of it."""
        part = self.arm_path.with_suffix(".part")
        part.write_text(f"{torn.write} {torn.seed}")
        part.replace(self.arm_path)

    def torn_kill(self) -> str | None:
        """What the worker's torn write-back sent before it killed itself (None: it did not)."""
        said = "torn write-back #"  # after the log's prefix: faust logs what goes to stderr
        lines = [line[line.index(said):] for line in self.log_tail(200_000).splitlines()
                 if said in line]
        if not lines:
            return None
        return lines[-1].strip().replace(f"{self.settings.worker.app_id}-", "").replace(
            "-changelog", "")

    @property
    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def stats(self) -> dict[str, Any]:
        return get_json(f"{self.url}/stats/", timeout_s=2)

    def consumed_purchases(self) -> float:
        consumed = self.stats().get("streamer_events_consumed_total", {})
        return float(consumed.get(self.settings.topics.purchases, 0.0))

    def baskets_in_place(self) -> int:
        """Item baskets this worker (since it started) learned in place, not through the
        item-baskets topic (``streamer.app.local_baskets``)."""
        learned = self.stats().get("streamer_baskets_learned_total") or {}
        return int(learned.get("local", 0))

    def state(self) -> dict[str, Any]:
        return get_json(f"{self.url}/state/items/")

    def ledger(self) -> dict[str, Any]:
        return get_json(f"{self.url}/state/rewards/")

    def feedback_records(self) -> float:
        return float(self.stats().get("streamer_feedback_records_total", 0.0))

    def offers_indexed(self) -> int:
        return int(self.stats().get("offer_index_size", 0))

    def dump_state(self) -> None:
        """``SIGUSR2``: the worker logs its partitions' consumer state and its task stacks."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.proc.pid, signal.SIGUSR2)

    def wait_ready(self, timeout_s: float) -> None:
        wait_for(lambda: not self.alive or self.stats().get("ready"), timeout_s,
                   "the worker to be ready")
        if not self.alive:
            raise AssertionError(f"worker exited: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the worker's whole process group: no shutdown, no final commit."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait(10)

    def stop(self) -> None:
        self.process.stop()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# -- the broker's view ------------------------------------------------------------------------
async def _produce(bootstrap: str, batches: Sequence[tuple[str, Sequence[Any]]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        encode = msgspec.json.encode
        for topic, events in batches:
            for event in events:
                key = event.anchor_item_id if isinstance(event, BundleOffer) else event.session_id
                await producer.send(topic, encode(event), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


def produce_orders(settings: Settings, orders: Sequence[PurchaseEvent],
                   clicks: Sequence[ClickEvent] = ()) -> None:
    """Send ``clicks`` and ``orders`` to their topics (keyed by session); returns once the
    broker has them all."""
    t = settings.topics
    asyncio.run(_produce(settings.kafka.bootstrap_servers,
                         [(t.clicks, clicks), (t.purchases, orders)]))


def produce_offers(settings: Settings, offers: Sequence[BundleOffer]) -> None:
    """Publish ``offers`` as if the worker had (keyed by anchor)."""
    asyncio.run(_produce(settings.kafka.bootstrap_servers, [(settings.topics.offers, offers)]))


async def _read_topic(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            values += [r.value for records in batch.values() for r in records]
            ends = {tp: consumer.highwater(tp) for tp in tps}
            if all(end is not None for end in ends.values()):
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= (ends[tp] or 0) for tp in tps):
                    return values
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end")
    finally:
        await consumer.stop()


def read_topic(settings: Settings, topic: str) -> list[bytes]:
    """Every value on ``topic`` now (its partitions read to their high watermarks)."""
    return asyncio.run(_read_topic(settings.kafka.bootstrap_servers, topic,
                                   settings.topics.partitions))


async def _unsettled(settings: Settings) -> dict[str, tuple[int, int]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    bootstrap = settings.kafka.bootstrap_servers
    topics = [settings.topics.purchases, settings.worker.app_id + BASKETS_SUFFIX,
              settings.topics.clicks, settings.worker.app_id + OUTCOMES_SUFFIX]
    tps = [TopicPartition(t, p) for t in topics for p in range(settings.topics.partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Explicit partitions: the embedded broker drops the connection on "all partitions".
        listed = await admin.list_consumer_group_offsets(settings.worker.app_id, partitions=tps)
    finally:
        await admin.close()
    committed = {tp: max(0, listed[tp].offset) if tp in listed else 0 for tp in tps}
    # End offsets from a fetch's high watermark: the embedded broker answers ListOffsets
    # (latest) with the last *batch's* base offset + 1, short of the real end.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, committed[tp])
        deadline = time.monotonic() + 10
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError("no high watermark from the broker")
            await consumer.getmany(timeout_ms=100, max_records=1)
        ends = {tp: int(consumer.highwater(tp) or 0) for tp in tps}
    finally:
        await consumer.stop()
    return {f"{tp.topic}[{tp.partition}]": (committed[tp], ends[tp])
            for tp in tps if committed[tp] != ends[tp]}


def unsettled(settings: Settings) -> dict[str, tuple[int, int]]:
    """Partitions of purchases / item-baskets / clicks / reward-outcomes whose committed
    offset is short of the end:
    ``{"topic[p]": (committed, end)}``; empty when everything produced has been processed."""
    return asyncio.run(_unsettled(settings))


def wait_settled(settings: Settings, workers: Sequence[Worker], timeout_s: float) -> None:
    """Wait until the group has committed everything produced (see the module doc)."""
    def check() -> bool:
        dead = [w for w in workers if not w.alive]
        if dead:
            raise AssertionError(f"a worker exited: {dead[0].log_tail()}")
        return not unsettled(settings)

    try:
        wait_for(check, timeout_s, "committed offsets to reach the end offsets",
                   interval_s=0.25)
    except AssertionError as e:
        for worker in workers:  # their logs say why (fast_consumer.partition_states)
            worker.dump_state()
        raise AssertionError(f"{e}; behind: {unsettled(settings)}; live workers were sent "
                             f"SIGUSR2: see {[str(w.process.log_path) for w in workers]}") from e


def group_state(workers: Sequence[Worker], partitions: int) -> CoPurchaseState:
    """The union of the live workers' active partitions; each partition owned exactly once."""
    union: dict[str, Any] = {"orders": None, "items": {}, "counts": {}}
    owned: list[int] = []
    for worker in workers:
        dump = wait_for(worker.state, 10, f"{worker.url}/state/items/")
        owned += dump["partitions"]
        union["items"].update(dump["items"])
        union["counts"].update(dump["counts"])
        if dump["orders"] is not None:
            union["orders"] = dump["orders"]
    assert sorted(owned) == list(range(partitions)), f"partitions owned: {sorted(owned)}"
    return state_from_dump(union)


def group_ledger(settings: Settings, workers: Sequence[Worker]) -> LedgerState:
    """The ledger as the broker and the live workers hold it (see the module doc)."""
    outcomes: dict[str, tuple[Any, ...]] = {}
    state = LedgerState(outcomes, {})
    for value in read_topic(settings, settings.topics.feedback):
        outcome = msgspec.json.decode(value, type=FeedbackRecord).outcome
        key = outcome_key(outcome)
        seen = outcomes.setdefault(outcome.impression_id, key)
        if seen is not key:
            state.duplicates += 1
            if seen != key:
                state.conflicting.append(outcome.impression_id)
    owned: list[int] = []
    windows: list[WindowAggregate] = []
    for worker in workers:
        dump = wait_for(worker.ledger, 10, f"{worker.url}/state/rewards/")
        owned += dump["partitions"]
        windows += [msgspec.convert(w, WindowAggregate) for _, w in dump["windows"]]
    assert sorted(owned) == list(range(settings.topics.partitions)), f"owned: {sorted(owned)}"
    published = [msgspec.json.decode(v) for v in read_topic(settings, settings.topics.rewards)]
    state.windows = ledger_windows(windows, published)
    return state


# -- trials ---------------------------------------------------------------------------------
@dataclass
class Trial:
    """One kill and what the state looked like once the group settled again."""

    name: str
    events: int  # purchases produced so far (cumulative)
    baskets: int  # (event, anchor) slices those purchases fan out to, order totals included
    kill_at: int  # purchases of this chunk consumed by the victim (at the last poll) when killed
    chunk: int
    diff: StateDiff
    seconds: float
    ledger: LedgerDiff | None = None  # compared once the impressions are closed
    #: Baskets the live workers learned in place (since they started), not through the topic.
    in_place: int = 0
    torn: str = ""  # what the torn write-back that killed the victim sent ("": a polled kill)

    @property
    def equal(self) -> bool:
        return self.diff.equal and (self.ledger is None or self.ledger.equal)

    def line(self) -> str:
        d = self.diff
        when = (f"~{self.kill_at}/{self.chunk} of the chunk" if self.chunk
                else f"~{self.kill_at} outcomes published")
        if self.torn:
            when += f" ({self.torn})"
        line = (f"{self.name}: events={self.events} baskets={self.baskets} "
                f"killed after {when}; "
                f"equal={d.equal} lost={d.lost:g} doubled={d.doubled:g} "
                f"({100 * d.doubled / self.baskets:.2f}% / {100 * d.lost / self.baskets:.2f}%) "
                f"anchors off={len(d.anchors_off)} item-counts off={len(d.counts_off)} "
                + (f"(e.g. {next(iter(d.counts_off.items()))}) " if d.counts_off else "")
                + f"in place={self.in_place} "
                f"[{self.seconds:.1f} s]")
        return line if self.ledger is None else f"{line}; {self.ledger.line()}"


def baskets_of(orders: Sequence[PurchaseEvent]) -> int:
    return sum(len({line.item_id for line in o.items}) + 1 for o in orders)


def kill_when(victim: Worker, progress: Callable[[], float], at: float,
              timeout_s: float, what: str, *, start: float) -> int:
    """SIGKILL ``victim`` once ``progress()`` grew by ``at`` from ``start``; returns the growth
    seen at the last poll before the kill.

    ``start`` is read *before* the events that make progress are produced: read after, a fast
    group may already have done most of the chunk, and the point to kill at never comes (a
    2-worker run consumed the whole chunk between the production and the baseline, and the
    harness timed out waiting for 200 more)."""
    seen = [0.0]

    def reached() -> bool:
        seen[0] = progress() - start
        return seen[0] >= at

    wait_for(reached, timeout_s, f"{at:g} {what}", interval_s=0.02)
    victim.kill()
    return int(seen[0])


def consumed_purchases(workers: Sequence[Worker]) -> float:
    """Purchases ``workers`` consumed so far, together (redeliveries included)."""
    return sum(w.consumed_purchases() for w in workers)


def kill_when_consumed(victim: Worker, observers: Sequence[Worker], at: int,
                       timeout_s: float, *, start: float) -> int:
    """SIGKILL ``victim`` once ``observers`` together consumed ``at`` more purchases than
    ``start`` (:func:`consumed_purchases` read before the chunk was produced); returns how
    many more they had consumed at the last poll before the kill."""
    try:
        return kill_when(victim, lambda: consumed_purchases(observers), at, timeout_s,
                         "purchases consumed", start=start)
    except AssertionError as e:
        for worker in observers:  # their logs say why (fast_consumer.partition_states)
            worker.dump_state()
        raise AssertionError(f"{e}; live workers were sent SIGUSR2: see "
                             f"{[str(w.process.log_path) for w in observers]}") from e


@dataclass(frozen=True)
class Kill:
    """A kill's point: the progress seen at the last poll before it, and, torn, what the
    write-back sent (:meth:`Worker.torn_kill`)."""

    at: int
    torn: str = ""


def kill_torn(victim: Worker, settings: Settings, progress: Callable[[], float],
              timeout_s: float, *, start: float) -> Kill:
    """Wait until ``victim``, armed (:meth:`Worker.arm_torn`) before the events were produced,
    killed itself in its torn write-back. When the group settles first (the events took fewer
    write-backs than ``write``), ``victim`` is SIGKILLed then, and the kill says so: it tore
    nothing. Then its process group is killed whatever it started."""
    seen = [0.0]

    def ended() -> bool:
        if not victim.alive:
            return True
        # The most seen: a worker that does not answer (busy, or dying) reads as 0.
        seen[0] = max(seen[0], progress() - start)
        return not unsettled(settings)

    try:
        wait_for(ended, timeout_s, "a torn write-back's kill, or the group to settle",
                 interval_s=0.25)
    except AssertionError as e:
        victim.dump_state()
        raise AssertionError(f"{e}; the victim was sent SIGUSR2: see "
                             f"{victim.process.log_path}") from e
    torn = victim.torn_kill() or "no torn write-back came: killed once settled"
    victim.kill()
    return Kill(int(seen[0]), torn)


def kill_in_chunk(settings: Settings, victim: Worker, observers: Sequence[Worker],
                  events: tuple[list[PurchaseEvent], list[ClickEvent]], *, at: int,
                  torn: TornWrite | None, timeout_s: float) -> Kill:
    """Produce a chunk's ``events`` and kill ``victim`` during it: at ``torn`` (armed first),
    or once ``observers`` consumed ``at`` of its purchases."""
    start = consumed_purchases(observers)
    if torn is not None:
        victim.arm_torn(torn)
    produce_orders(settings, *events)
    if torn is not None:
        return kill_torn(victim, settings, lambda: consumed_purchases(observers), timeout_s,
                         start=start)
    return Kill(kill_when_consumed(victim, observers, at, timeout_s, start=start))


#: How a run kills: ``mixed`` (some kills torn, see the module doc), every kill ``torn``, or
#: every kill at a ``polled`` counter.
KillMode = Literal["mixed", "torn", "polled"]


def tears(mode: KillMode, in_mixed: bool) -> bool:
    """Whether a kill is torn in ``mode`` (``in_mixed``: whether it is when mixed)."""
    return mode == "torn" or (mode == "mixed" and in_mixed)


@dataclass
class RunEvents:
    """A run's events: offers first, then chunks of orders with their sessions' clicks."""

    ts: int
    offers: list[BundleOffer]
    orders: list[PurchaseEvent]
    clicks: list[list[ClickEvent]]  # per order

    @classmethod
    def make(cls, n: int, *, seed: int) -> RunEvents:
        ts = event_time()
        offers = make_offers(ts)
        orders, clicks = with_offer_activity(make_orders(n, seed=seed, ts_ms=ts), offers,
                                             seed=seed)
        return cls(ts, offers, orders, clicks)

    def chunk(self, n: int, size: int) -> tuple[list[PurchaseEvent], list[ClickEvent]]:
        lo, hi = n * size, (n + 1) * size
        return self.orders[lo:hi], [c for session in self.clicks[lo:hi] for c in session]

    def all_clicks(self, orders: int | None = None) -> list[ClickEvent]:
        """The clicks of the first ``orders`` orders' sessions (all: None)."""
        return [c for session in self.clicks[:orders] for c in session]


def close_and_compare_ledger(settings: Settings, workers: list[Worker], run: RunEvents,
                             workdir: Path, *, victim_index: int | None, seed: int,
                             timeout_s: float, torn: bool = False, torn_write: int = 1,
                             ) -> tuple[list[Worker], LedgerDiff, Kill]:
    """Close every impression (:func:`closing_events`); with ``victim_index``, kill that
    worker, ``torn`` at a seeded write-back or else once the group published a seeded number
    of outcomes, and restart it. Waits until the group settled, then compares the ledger;
    returns the workers now live."""
    rng = random.Random(seed)
    torn_at = TornWrite.draw(rng, torn_write)
    for worker in workers:  # a worker closing impressions of unknown offers has no versions
        wait_for(lambda w=worker: w.offers_indexed() >= len(run.offers), timeout_s,
                 f"{worker.url} to index the offers")
    closing = closing_events(settings, run.ts, tag=str(seed))
    impressions = sum(1 for c in run.all_clicks() if c.kind == "offer_impression")
    def published() -> float:
        return sum(w.feedback_records() for w in workers)

    start = published()
    at = rng.randint(1, max(1, impressions // 2))
    if victim_index is not None and torn:
        workers[victim_index].arm_torn(torn_at)
    produce_orders(settings, [], closing)
    kill = Kill(0)
    if victim_index is not None:
        victim = workers[victim_index]
        kill = (kill_torn(victim, settings, published, timeout_s, start=start) if torn
                else Kill(kill_when(victim, published, at, timeout_s, "outcomes published",
                                    start=start)))
        log_path = victim.process.log_path
        workers[victim_index] = Worker(victim.settings,
                                       log_path.with_name(f"{log_path.stem}-closed.log"),
                                       torn=victim.torn)
        workers[victim_index].wait_ready(timeout_s)
    wait_settled(settings, workers, timeout_s)
    expected = reference_ledger(settings, run.offers, run.orders, run.all_clicks(), closing)
    return workers, compare_ledger(expected, group_ledger(settings, workers)), kill


def run_single_worker_trials(settings: Settings, workdir: Path, *, trials: int, orders_per: int,
                             seed: int, on_trial: Callable[[Trial], None] | None = None,
                             timeout_s: float = 60.0, kill: KillMode = "mixed",
                             torn_write: int = 1) -> list[Trial]:
    """One worker, ``trials`` chunks of ``orders_per`` purchases (and their sessions' clicks);
    during each chunk the worker is killed at a seeded random point and restarted (same app
    id: tables recover from their changelogs), then the co-purchase state is compared with the
    reference for every chunk so far. Last, every impression is closed, the worker killed
    once more while it publishes the outcomes, and the reward ledger compared. ``mixed``:
    chunk 1's kill is torn, chunk 2's polled, and so on; the one while closing is torn."""
    rng = random.Random(seed)
    run = RunEvents.make(trials * orders_per, seed=seed)
    produce_offers(settings, run.offers)
    worker = Worker(worker_settings(settings, 0, workdir), workdir / "worker-0.log", torn=True)
    results: list[Trial] = []
    try:
        worker.wait_ready(timeout_s)
        for n in range(trials):
            begin = time.monotonic()
            # In the first half of the chunk: the consumed counter also counts redeliveries
            # (after the rebalance that follows a restart), so a later point may never come.
            at = rng.randint(1, orders_per // 2)
            torn = TornWrite.draw(rng, torn_write)
            killed = kill_in_chunk(settings, worker, [worker], run.chunk(n, orders_per), at=at,
                                   torn=torn if tears(kill, n % 2 == 0) else None,
                                   timeout_s=timeout_s)
            worker = Worker(worker.settings, workdir / f"worker-0-{n + 1}.log", torn=True)
            worker.wait_ready(timeout_s)
            wait_settled(settings, [worker], timeout_s)
            so_far = run.orders[:(n + 1) * orders_per]
            diff = compare(reference_state(settings, so_far, run.all_clicks(len(so_far))),
                           group_state([worker], settings.topics.partitions))
            trial = Trial(f"single #{n + 1}", len(so_far), baskets_of(so_far), killed.at,
                          orders_per, diff, time.monotonic() - begin,
                          in_place=worker.baskets_in_place(), torn=killed.torn)
            results.append(trial)
            if on_trial:
                on_trial(trial)
        begin = time.monotonic()
        live, ledger, killed = close_and_compare_ledger(
            settings, [worker], run, workdir, victim_index=0, seed=seed, timeout_s=timeout_s,
            torn=tears(kill, True), torn_write=torn_write)
        worker = live[0]
        diff = compare(reference_state(settings, run.orders, run.all_clicks()),
                       group_state([worker], settings.topics.partitions))
        trial = Trial("single, closing the impressions", len(run.orders),
                      baskets_of(run.orders), killed.at, 0, diff, time.monotonic() - begin,
                      ledger, torn=killed.torn)
        results.append(trial)
        if on_trial:
            on_trial(trial)
    finally:
        worker.stop()
    return results


def run_rebalance_trials(settings: Settings, workdir: Path, *, orders_per: int, seed: int,
                         on_trial: Callable[[Trial], None] | None = None,
                         timeout_s: float = 90.0, kill: KillMode = "mixed",
                         torn_write: int = 1) -> list[Trial]:
    """Two workers on ``settings.topics.partitions`` partitions. Chunk 1: B is killed mid-run
    and A takes its partitions over (rebalance after B's session times out). Then B is
    restarted (rebalance back) and, during chunk 2, A is killed and B takes over; A comes
    back. Last, every impression is closed, B killed while the outcomes are published, and
    the reward ledger compared. ``mixed``: B's kill in chunk 1 is torn, the others polled."""
    rng = random.Random(seed)
    run = RunEvents.make(2 * orders_per, seed=seed)
    produce_offers(settings, run.offers)
    a = Worker(worker_settings(settings, 0, workdir), workdir / f"worker-a-{seed}.log",
               torn=True)
    b = Worker(worker_settings(settings, 1, workdir), workdir / f"worker-b-{seed}.log",
               torn=True)
    results: list[Trial] = []

    def split() -> bool:
        da, db = a.state(), b.state()
        return bool(da.get("partitions")) and bool(db.get("partitions"))

    try:
        a.wait_ready(timeout_s)
        b.wait_ready(timeout_s)
        wait_for(split, timeout_s, "both workers to own partitions")
        for n in range(2):
            # Chosen now, not up front: the worker killed in chunk 1 is restarted as a new
            # Worker, and that one survives chunk 2.
            victim, survivor = (b, a) if n == 0 else (a, b)
            begin = time.monotonic()
            at, torn = rng.randint(1, orders_per // 2), TornWrite.draw(rng, torn_write)
            killed = kill_in_chunk(settings, victim, [a, b], run.chunk(n, orders_per), at=at,
                                   torn=torn if tears(kill, n == 0) else None,
                                   timeout_s=timeout_s)
            wait_settled(settings, [survivor], timeout_s)
            so_far = run.orders[:(n + 1) * orders_per]
            diff = compare(reference_state(settings, so_far, run.all_clicks(len(so_far))),
                           group_state([survivor], settings.topics.partitions))
            trial = Trial(f"rebalance #{n + 1} (killed {'B' if victim is b else 'A'})",
                          len(so_far), baskets_of(so_far), killed.at, orders_per, diff,
                          time.monotonic() - begin, in_place=survivor.baskets_in_place(),
                          torn=killed.torn)
            results.append(trial)
            if on_trial:
                on_trial(trial)
            # The victim comes back: partitions move to it again (recovered from changelogs).
            back_log = workdir / f"worker-{'b' if victim is b else 'a'}-{seed}-{n + 2}.log"
            restarted = Worker(victim.settings, back_log, torn=True)
            if victim is b:
                b = restarted
            else:
                a = restarted
            restarted.wait_ready(timeout_s)
            wait_for(split, timeout_s, "both workers to own partitions")
            wait_settled(settings, [a, b], timeout_s)
            back = compare(reference_state(settings, so_far, run.all_clicks(len(so_far))),
                           group_state([a, b], settings.topics.partitions))
            assert back.equal, f"after {'B' if victim is b else 'A'} rejoined: {back}"
        begin = time.monotonic()
        live, ledger, killed = close_and_compare_ledger(
            settings, [a, b], run, workdir, victim_index=1, seed=seed, timeout_s=timeout_s,
            torn=tears(kill, False), torn_write=torn_write)
        a, b = live
        diff = compare(reference_state(settings, run.orders, run.all_clicks()),
                       group_state([a, b], settings.topics.partitions))
        trial = Trial("rebalance, closing the impressions (killed B)", len(run.orders),
                      baskets_of(run.orders), killed.at, 0, diff, time.monotonic() - begin,
                      ledger, torn=killed.torn)
        results.append(trial)
        if on_trial:
            on_trial(trial)
    finally:
        a.stop()
        b.stop()
    return results


# -- command line: more trials than the test runs -------------------------------------------
def fresh_settings(bootstrap: str, workdir: Path, partitions: int = 4) -> Settings:
    """Settings with fresh topics and app id, like the tests' ``settings`` fixture; one reward
    window of 1 h (it stays open for the whole run: see :func:`event_time`)."""
    import uuid

    suffix = uuid.uuid4().hex[:8]
    return on_embedded(Settings(
        topics={name: f"{name}-{suffix}" for name in
                ("clicks", "purchases", "offers", "feedback", "rewards", "dead_letters")}
        | {"policy_updates": f"policy-updates-{suffix}", "partitions": partitions},
        worker={"app_id": f"streamer-crash-{suffix}", "web_port": free_port(),
                "data_dir": str(workdir / "data")},
        offers={"min_interval_s": 0.0, "min_support": 1.0},
        # Windows per anchor and per segment too: more windows to compare, each exactly.
        rewards={"windows": "1h", "by_anchor": True, "by_segment": True},
        # Co-carts at the weight of a purchase: their baskets are learned exactly once too,
        # and every count stays an exact integer.
        copurchase={"co_cart_weight": 1.0},
    ), bootstrap)


@contextlib.contextmanager
def _broker(workdir: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        yield broker


def main(argv: list[str] | None = None) -> None:
    from streamer.app.worker import ensure_topics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--orders", type=int, default=500, help="purchases per trial")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rebalance", action="store_true", help="also the 2-worker trials")
    parser.add_argument("--rebalance-runs", type=int, default=1,
                        help="2-worker runs (fresh topics and group each, seeds seed, seed+1..)")
    parser.add_argument("--no-single", action="store_true", help="skip the 1-worker trials")
    parser.add_argument("--single-runs", type=int, default=1,
                        help="1-worker runs (fresh topics and group each, seeds seed, seed+1..)")
    parser.add_argument("--kill", choices=["mixed", "torn", "polled"], default="mixed",
                        help="torn write-backs for some kills (mixed), every kill, or none")
    parser.add_argument("--torn-write", type=int, default=1,
                        help="the write-back a torn kill tears (counted from its arming)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="crash-"))
    trials: list[Trial] = []
    failed: list[str] = []

    def show(trial: Trial) -> None:
        print(trial.line(), flush=True)

    with _broker(workdir) as broker:
        runs: list[tuple[str, Callable[[Settings, Path], list[Trial]]]] = []
        for r in range(0 if args.no_single else args.single_runs):
            runs.append((f"single run {r + 1}", lambda s, d, r=r: run_single_worker_trials(
                s, d, trials=args.trials, orders_per=args.orders, seed=args.seed + r,
                on_trial=show, kill=args.kill, torn_write=args.torn_write)))
        if args.rebalance:
            for r in range(args.rebalance_runs):
                runs.append((f"rebalance run {r + 1}", lambda s, d, r=r: run_rebalance_trials(
                    s, d, orders_per=args.orders, seed=args.seed + r, on_trial=show,
                    kill=args.kill, torn_write=args.torn_write)))
        for n, (name, run) in enumerate(runs):
            rundir = workdir / f"run-{n + 1}"  # its own logs (and arm files: Worker.arm_torn)
            rundir.mkdir()
            s = fresh_settings(broker.bootstrap, rundir)
            asyncio.run(ensure_topics(s))
            print(f"-- {name} (app {s.worker.app_id}, in {rundir})", flush=True)
            try:
                trials += run(s, rundir)
            except AssertionError as e:  # a run that did not settle: report, go on
                failed.append(f"{name}: {e}")
                print(f"{name} FAILED: {e}", flush=True)
    bad = [t for t in trials if not t.equal]
    torn = [t for t in trials if t.torn]
    untorn = [t for t in torn if not t.torn.startswith("torn write-back #")]
    print(f"{len(trials)} trials, {len(bad)} with a state or ledger different from the "
          f"uninterrupted run, {len(failed)} runs failed; {len(torn)} torn kills "
          f"({len(untorn)} found no such write-back); logs in {workdir}")
    for f in failed:
        print(f"failed: {f[:2000]}")


if __name__ == "__main__":
    main()
