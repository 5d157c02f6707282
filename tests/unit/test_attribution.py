"""Attribution of impressions, offer clicks and purchases: table-driven, plus order/dup/bounds."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from streamer.events.models import (
    BundleOffer,
    ClickEvent,
    Evidence,
    OrderLine,
    PurchaseEvent,
    Variant,
)
from streamer.rewards import Attributor, ImpressionOutcome, SessionState, learning_reward

T0 = 1_700_000_000_000
MIN = 60_000
WINDOW = 30 * MIN
LATENESS = MIN
PRICES = {"a": 20.0, "b": 10.0, "c": 5.0, "d": 7.0, "z": 100.0}


def offer(offer_id: str, *bundles: tuple[str, ...], version: str = "v1") -> BundleOffer:
    ev = Evidence(support=3.0, confidence=0.4, lift=2.0)
    variants = [
        Variant(
            items=list(items),
            discount_pct=10.0,
            bundle_price=0.9 * sum(PRICES[i] for i in items),
            probability=1.0 / len(bundles),
            score=0.0,
            evidence=ev,
        )
        for items in bundles
    ]
    return BundleOffer(
        offer_id=offer_id,
        ts=T0 - 10 * MIN,
        anchor_item_id=bundles[0][0],
        segment="all",
        policy_version=version,
        variants=variants,
        expires_at=T0 + 600 * MIN,
    )


OFFERS = {
    "o1": offer("o1", ("a", "b"), ("a", "c")),
    "o2": offer("o2", ("b", "a"), version="v2"),
    "o3": offer("o3", ("c", "d")),
}


def imp(eid: str, minute: float, offer_id: str = "o1", *, variant: int = 0, s: str = "s1") -> Any:
    return ClickEvent(
        event_id=eid,
        ts=T0 + int(minute * MIN),
        user_id="u1",
        session_id=s,
        item_id="a",
        kind="offer_impression",
        offer_id=offer_id,
        variant=variant,
        propensity=0.5,
    )


def click(eid: str, minute: float, offer_id: str = "o1", *, s: str = "s1") -> Any:
    return ClickEvent(
        event_id=eid,
        ts=T0 + int(minute * MIN),
        user_id="u1",
        session_id=s,
        item_id="a",
        kind="offer_click",
        offer_id=offer_id,
    )


def view(eid: str, minute: float, *, s: str = "other") -> Any:
    """Any event moves the event clock; views from another session are the usual driver."""
    return ClickEvent(
        event_id=eid,
        ts=T0 + int(minute * MIN),
        user_id="u9",
        session_id=s,
        item_id="z",
        kind="view",
    )


def buy(
    eid: str, minute: float, items: str, *, offer_id: str | None = None, s: str = "s1", qty: int = 1
) -> Any:
    return PurchaseEvent(
        event_id=eid,
        ts=T0 + int(minute * MIN),
        user_id="u1",
        session_id=s,
        order_id="r" + eid,
        items=[OrderLine(item_id=i, quantity=qty, unit_price=PRICES[i]) for i in items],
        offer_id=offer_id,
    )


@dataclass(frozen=True)
class Advance:
    minute: float


@dataclass(frozen=True)
class Case:
    name: str
    steps: list[Any]
    # (impression_id, clicked, converted, reward, purchase_ids, late)
    records: list[tuple[str, bool, bool, float, tuple[str, ...], bool]]
    statuses: list[str] = field(default_factory=list)  # of the observed events, in order


CASES = [
    Case(
        "in_window",
        [imp("i1", 0), buy("p1", 10, "abz")],
        [("i1", False, True, 30.0, ("p1",), False)],
        ["applied", "applied"],
    ),
    Case(
        "out_of_window",
        [imp("i1", 0), buy("p1", 31, "ab")],
        [("i1", False, False, 0.0, (), False)],
    ),
    Case(
        "window_end_is_exclusive",
        [imp("i1", 0), buy("p1", 30, "ab")],
        [("i1", False, False, 0.0, (), False)],
    ),
    Case(
        "purchase_before_impression",
        [buy("p1", 0, "ab"), imp("i1", 1)],
        [("i1", False, False, 0.0, (), False)],
    ),
    Case(
        "duplicate_purchase",
        [imp("i1", 0), buy("p1", 10, "ab"), buy("p1", 10, "ab")],
        [("i1", False, True, 30.0, ("p1",), False)],
        ["applied", "applied", "duplicate"],
    ),
    Case("purchase_with_no_impression", [buy("p1", 10, "ab")], [], ["applied"]),
    Case(
        "other_session",
        [imp("i1", 0), buy("p1", 10, "ab", s="s2")],
        [("i1", False, False, 0.0, (), False)],
    ),
    Case(
        "partial_bundle",
        [imp("i1", 0), buy("p1", 10, "az")],
        [("i1", False, False, 0.0, (), False)],
    ),
    Case(
        "variant_decides_the_bundle",
        [imp("i1", 0, variant=1), buy("p1", 10, "ab"), buy("p2", 12, "ac")],
        [("i1", False, True, 25.0, ("p2",), False)],
    ),
    Case(
        "offer_id_carrying_purchase_counts_bundle_items_only",
        [imp("i1", 0), buy("p1", 10, "az", offer_id="o1")],
        [("i1", False, True, 20.0, ("p1",), False)],
    ),
    Case(
        "quantities_multiply",
        [imp("i1", 0), buy("p1", 10, "ab", qty=3)],
        [("i1", False, True, 90.0, ("p1",), False)],
    ),
    Case(
        "another_offers_claim_wins_over_items",
        [imp("i1", 0), buy("p1", 10, "ab", offer_id="o9")],
        [("i1", False, False, 0.0, (), False)],
    ),
    Case(
        "two_impressions_same_offer_latest_gets_it",
        [imp("i1", 0), imp("i2", 5), buy("p1", 10, "ab", offer_id="o1")],
        [("i1", False, False, 0.0, (), False), ("i2", False, True, 30.0, ("p1",), False)],
    ),
    Case(
        "latest_impression_before_the_purchase",
        [imp("i1", 0), buy("p1", 2, "ab"), imp("i2", 5)],
        [("i1", False, True, 30.0, ("p1",), False), ("i2", False, False, 0.0, (), False)],
    ),
    Case(
        "purchase_matching_two_offers_is_attributed_once",
        [imp("i1", 0, "o1"), imp("i2", 1, "o2"), buy("p1", 10, "ab")],
        [("i1", False, False, 0.0, (), False), ("i2", False, True, 30.0, ("p1",), False)],
    ),
    Case(
        "two_purchases_add_up",
        [imp("i1", 0), buy("p1", 10, "ab"), buy("p2", 20, "ab", offer_id="o1")],
        [("i1", False, True, 60.0, ("p1", "p2"), False)],
    ),
    Case(
        "duplicate_impression",
        [imp("i1", 0), imp("i1", 0), buy("p1", 10, "ab")],
        [("i1", False, True, 30.0, ("p1",), False)],
        ["applied", "duplicate", "applied"],
    ),
    Case(
        "offer_click_counts_separately",
        [imp("i1", 0), click("c1", 1), click("c2", 2, "o3")],
        [("i1", True, False, 0.0, (), False)],
    ),
    Case(
        "late_within_lateness_counts",
        [imp("i1", 0), view("v1", 10.5), buy("p1", 10, "ab")],
        [("i1", False, True, 30.0, ("p1",), False)],
        ["applied", "ignored", "applied"],
    ),
    Case(
        "late_beyond_lateness_but_window_open_counts_flagged",
        [imp("i1", 0), view("v1", 20), buy("p1", 10, "ab")],
        [("i1", False, True, 30.0, ("p1",), True)],
        ["applied", "ignored", "late_applied"],
    ),
    Case(
        "too_late_is_counted_not_applied",
        [imp("i1", 0), view("v1", 45), buy("p1", 10, "ab")],
        [("i1", False, False, 0.0, (), False)],
        ["applied", "ignored", "too_late"],
    ),
    Case(
        "duplicate_purchase_after_close_is_remembered",
        [imp("i1", 0), buy("p1", 25, "ab"), Advance(32), buy("p1", 25, "ab")],
        [("i1", False, True, 30.0, ("p1",), False)],
        ["applied", "applied", "duplicate"],
    ),
    Case(
        "consumed_purchase_not_reattributed_to_late_impression",
        [imp("i1", 0), buy("p1", 25, "ab"), Advance(32), imp("i2", 20)],
        [("i1", False, True, 30.0, ("p1",), False), ("i2", False, False, 0.0, (), True)],
        ["applied", "applied", "late_applied"],
    ),
    Case(
        "redelivered_impression_after_close_never_reopens",
        [imp("i1", 0), Advance(40), imp("i1", 0)],
        [("i1", False, False, 0.0, (), False)],
        ["applied", "too_late"],
    ),
    Case(
        "impression_without_offer_fields_is_invalid",
        [
            ClickEvent(
                event_id="x",
                ts=T0,
                user_id="u",
                session_id="s1",
                item_id="a",
                kind="offer_impression",
            )
        ],
        [],
        ["invalid"],
    ),
    Case("variant_missing_from_offer_is_invalid", [imp("i1", 0, variant=5)], [], ["invalid"]),
]


class ChangelogMapping(MutableMapping[str, SessionState]):
    """Stores encoded bytes like a changelog-backed table: in-place mutation would be lost."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self.writes = 0

    def __getitem__(self, key: str) -> SessionState:
        return msgspec.msgpack.decode(self._data[key], type=SessionState)

    def __setitem__(self, key: str, value: SessionState) -> None:
        self.writes += 1
        self._data[key] = msgspec.msgpack.encode(value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def run(
    steps: list[Any], sessions: MutableMapping[str, SessionState], **kw: Any
) -> tuple[Attributor, list[ImpressionOutcome], list[str]]:
    att = Attributor(sessions, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS, **kw)
    records: list[ImpressionOutcome] = []
    statuses: list[str] = []
    for step in steps:
        if isinstance(step, Advance):
            records += att.advance(T0 + int(step.minute * MIN))
        else:
            statuses.append(att.observe(step))
    records += att.advance(T0 + 24 * 60 * MIN)
    return att, records, statuses


@pytest.mark.parametrize("store", ["dict", "changelog"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_attribution_table(case: Case, store: str) -> None:
    sessions: MutableMapping[str, SessionState] = {} if store == "dict" else ChangelogMapping()
    att, records, statuses = run(case.steps, sessions)
    got = [
        (r.impression_id, r.clicked, r.converted, r.reward, r.purchase_ids, r.late) for r in records
    ]
    assert got == case.records
    if case.statuses:
        assert statuses == case.statuses
    for status in set(statuses):
        assert att.counts[status] == statuses.count(status)
    assert len(sessions) == 0, "state must be empty once every window has passed"


#: (steps, [(impression_id, attribution, reward, direct_reward, converted under "offer")]).
ATTRIBUTION_CASES: dict[str, tuple[list[Any], list[tuple[str, str, float, float, bool]]]] = {
    "nothing_bought": ([imp("i1", 0)], [("i1", "none", 0.0, 0.0, False)]),
    "through_the_offer": (
        [imp("i1", 0), buy("p1", 1, "ab", offer_id="o1")],
        [("i1", "offer", 30.0, 30.0, True)],
    ),
    "organic_basket_holding_the_bundle": (
        [imp("i1", 0), buy("p1", 1, "abz")],
        [("i1", "basket", 30.0, 0.0, False)],
    ),
    "offer_and_basket_purchases_both_credited_direct_only_counts_the_offers": (
        [imp("i1", 0), buy("p1", 1, "ab", offer_id="o1"), buy("p2", 5, "ab")],
        [("i1", "offer", 60.0, 30.0, True)],
    ),
    "another_offers_purchase_is_neither": (
        [imp("i1", 0), buy("p1", 1, "ab", offer_id="o3")],
        [("i1", "none", 0.0, 0.0, False)],
    ),
    "unknown_offer_only_offer_id_purchases_match": (
        [imp("i1", 0, "o9"), buy("p1", 1, "az", offer_id="o9")],
        [("i1", "offer", 120.0, 120.0, True)],
    ),
}


@pytest.mark.parametrize("name", ATTRIBUTION_CASES)
def test_outcome_says_how_its_reward_was_attributed(name: str) -> None:
    steps, expected = ATTRIBUTION_CASES[name]
    _, records, _ = run(steps, {})
    got = [(r.impression_id, r.attribution, r.reward, r.direct_reward,
            learning_reward(r, "offer")[1]) for r in records]
    assert got == expected
    for r in records:  # "any" is the contract's reward, what the ledger reports
        assert learning_reward(r, "any") == (r.reward, r.converted)
        assert learning_reward(r, "offer") == (r.direct_reward, r.attribution == "offer")
        assert r.direct_revenue <= r.revenue


def test_learning_reward_refuses_an_unknown_mode() -> None:
    _, (r,), _ = run([imp("i1", 0)], {})
    with pytest.raises(ValueError, match="reward attribution"):
        learning_reward(r, "basket")  # type: ignore[arg-type]


def test_outcome_written_before_the_attribution_fields_decodes_with_defaults() -> None:
    _, (r,), _ = run([imp("i1", 0), buy("p1", 1, "ab", offer_id="o1")], {})
    old = msgspec.to_builtins(r)
    for key in ("attribution", "direct_revenue", "direct_reward"):
        del old[key]
    decoded = msgspec.convert(old, type=ImpressionOutcome)
    assert (decoded.attribution, decoded.direct_reward) == ("none", 0.0)


def test_record_carries_the_decision_context_and_round_trips() -> None:
    _, records, _ = run([imp("i1", 0, "o2"), click("c1", 1, "o2"), buy("p1", 3, "ab")], {})
    (r,) = records
    assert (r.policy_version, r.anchor_item_id, r.segment, r.items) == (
        "v2",
        "b",
        "all",
        ("b", "a"),
    )
    assert (r.offer_id, r.variant, r.propensity, r.discount_pct) == ("o2", 0, 0.5, 10.0)
    assert (r.session_id, r.user_id, r.ts, r.attributed_at) == ("s1", "u1", T0, T0 + 3 * MIN)
    assert msgspec.json.decode(msgspec.json.encode(r), type=ImpressionOutcome) == r


def test_unconverted_outcome_is_decided_at_window_end() -> None:
    _, (r,), _ = run([imp("i1", 0)], {})
    assert r.attributed_at == T0 + WINDOW and r.reward == 0.0 and not r.converted


def test_margin_reward_uses_cost_of_the_undiscounted_price() -> None:
    steps = [imp("i1", 0), buy("p1", 3, "ab", offer_id="o1")]
    _, (r,), _ = run(steps, {}, reward="margin", cost_ratio=0.45)
    # paid 30 at 10% off: list price 33.33, cost 15, margin 15
    assert r.revenue == pytest.approx(30.0)
    assert r.reward == pytest.approx(15.0)
    _, (r,), _ = run([imp("i1", 0), buy("p1", 3, "ab")], {}, reward="margin", cost_ratio=0.45)
    assert r.reward == pytest.approx(30.0 * 0.55)  # no offer_id: no evidence of the discount


def test_offer_published_after_its_impression_is_found_at_close() -> None:
    offers: dict[str, BundleOffer] = {}
    att = Attributor({}, offers, window_ms=WINDOW, allowed_lateness_ms=LATENESS)
    assert att.observe(imp("i1", 0, "o3")) == "applied"
    assert att.observe(buy("p1", 5, "cd")) == "applied"
    offers["o3"] = OFFERS["o3"]
    (r,) = att.advance(T0 + 40 * MIN)
    assert (r.policy_version, r.converted, r.reward) == ("v1", True, 12.0)


def test_offer_never_found_leaves_context_empty() -> None:
    att = Attributor({}, lambda _id: None, window_ms=WINDOW, allowed_lateness_ms=LATENESS)
    att.observe(imp("i1", 0, "o3"))
    att.observe(buy("p1", 5, "cdz", offer_id="o3"))
    att.observe(buy("p2", 6, "cd"))  # item containment needs the bundle: not attributed
    (r,) = att.advance(T0 + 40 * MIN)
    assert r.policy_version is None and r.items == ()
    assert r.purchase_ids == ("p1",) and r.reward == 112.0  # the whole order went via the offer


def test_a_session_state_knows_each_event_it_holds_and_its_oldest() -> None:
    from streamer.rewards.attribution import (
        PendingClick,
        PendingImpression,
        PendingPurchase,
        Tombstone,
    )

    assert not SessionState().holds("i") and SessionState().oldest_ts() is None
    state = SessionState(
        impressions=(PendingImpression(event_id="i", ts=T0 + 3, user_id="u", offer_id="o",
                                       variant=0, propensity=0.5),),
        clicks=(PendingClick(event_id="c", ts=T0 + 2, offer_id="o"),),
        purchases=(PendingPurchase(event_id="p", ts=T0 + 4, offer_id=None, lines=()),
                   PendingPurchase(event_id="q", ts=T0 + 1, offer_id=None, lines=())),
        consumed=(Tombstone(event_id="t", ts=T0 + 5),),
    )
    assert all(state.holds(e) for e in "icpqt") and not state.holds("x")
    assert state.oldest_ts() == T0 + 1
    assert SessionState(consumed=(Tombstone(event_id="t", ts=T0),)).oldest_ts() == T0


def test_session_overflow_is_reported() -> None:
    att = Attributor({}, OFFERS, window_ms=WINDOW, max_session_events=2)
    statuses = [att.observe(imp(f"i{k}", k / 10)) for k in range(3)]
    assert statuses == ["applied", "applied", "overflow"]


def test_a_session_holds_a_bounded_number_of_order_lines() -> None:
    # One session's state is one changelog record: bounded in lines, not only in events.
    att = Attributor({}, OFFERS, window_ms=WINDOW, max_session_lines=5)
    statuses = [att.observe(buy(f"p{k}", k / 10, "ab")) for k in range(4)]
    assert statuses == ["applied", "applied", "overflow", "overflow"]  # 2 + 2 + 2 > 5
    assert att.observe(buy("q", 1, "ab", s="s2")) == "applied"  # another session


def test_restart_on_the_same_state_gives_the_same_records() -> None:
    steps = [imp("i1", 0), imp("i2", 5, s="s2"), buy("p1", 10, "ab"), view("v", 20)]
    sessions: dict[str, SessionState] = {}
    clock: dict[str, int] = {}
    first = Attributor(
        sessions, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS, watermarks=clock
    )
    for e in steps:
        first.observe(e)
    # A new instance (a restarted worker) rebuilds its due index from the recovered mappings.
    second = Attributor(
        sessions, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS, watermarks=clock
    )
    assert second.observe(imp("i1", 0)) == "duplicate"
    # Its event clock is the recovered one (at 20 min, watermark 19): an impression at -12 min
    # can reach no open window, though nothing has been observed since the restart.
    assert second.max_event_ts == T0 + 20 * MIN
    assert second.observe(imp("old", -12, s="s3")) == "too_late"
    records = second.advance(T0 + 60 * MIN)
    assert [(r.impression_id, r.converted) for r in records] == [("i1", True), ("i2", False)]
    assert second.observe(imp("i1", 0)) == "too_late"
    assert sessions == {}


def test_an_event_from_the_far_future_is_refused_and_leaves_the_clock_alone() -> None:
    clock: dict[str, int] = {}
    att = Attributor({}, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS,
                     watermarks=clock, max_ahead_ms=5 * MIN)
    now = T0 + 10 * 365 * 24 * 60 * MIN  # wall time: events replayed from years before
    assert att.observe(imp("i1", 0), now_ms=T0) == "applied"
    # A host with a broken clock: ahead of the clock and of wall time.
    bogus = view("bot", 80 * 365 * 24 * 60, s="bot")
    assert att.observe(bogus, now_ms=T0) == "too_early"
    assert att.observe(bogus) == "too_early"  # without a wall time, the clock alone judges
    assert clock == {"max_event_ts": T0} and att.counts["too_early"] == 2
    assert att.advance() == []
    assert att.observe(buy("p1", 2, "ab"), now_ms=T0) == "applied"
    assert att.observe(imp("i2", 4.9, s="s2"), now_ms=T0) == "applied"  # within 5 min
    # A replay's gap (a night without traffic): far ahead of the clock, behind wall time.
    assert att.observe(imp("i3", 12 * 60, s="s3"), now_ms=now) == "applied"
    assert att.max_event_ts == T0 + 12 * 60 * MIN
    closed = att.advance()
    assert [(r.impression_id, r.converted) for r in closed] == [("i1", True), ("i2", False)]


def test_without_max_ahead_an_event_moves_the_clock_wherever_it_says() -> None:
    att = Attributor({}, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS)
    att.observe(imp("i1", 0))
    assert att.observe(view("v", 24 * 60), now_ms=T0) == "ignored"
    assert att.max_event_ts == T0 + 24 * 60 * MIN


def _stream(rng: random.Random, sessions: int) -> list[Any]:
    events: list[Any] = []
    for n in range(sessions):
        s = f"s{n}"
        start = rng.uniform(0, 180)
        for k in range(rng.randint(1, 3)):
            t = start + k * rng.uniform(0, 20)
            o = rng.choice(["o1", "o2", "o3"])
            events.append(imp(f"{s}i{k}", t, o, s=s))
            if rng.random() < 0.3:
                events.append(click(f"{s}c{k}", t + rng.uniform(0, 5), o, s=s))
            if rng.random() < 0.3:
                items = rng.choice(["ab", "abz", "cd", "a", "ac"])
                via = o if rng.random() < 0.5 else None
                events.append(buy(f"{s}p{k}", t + rng.uniform(0, 40), items, offer_id=via, s=s))
    events.sort(key=lambda e: e.ts)
    return events


def _outcomes(events: list[Any], advance_every: int = 50) -> list[ImpressionOutcome]:
    att = Attributor({}, OFFERS, window_ms=WINDOW, allowed_lateness_ms=5 * MIN)
    records = []
    for n, e in enumerate(events):
        att.observe(e)
        if n % advance_every == 0:
            records += att.advance()
    records += att.advance(T0 + 24 * 60 * MIN)
    assert att.counts["too_late"] == 0 and att.counts["late_applied"] == 0
    return sorted(records, key=lambda r: r.impression_id)


def test_delivery_order_within_lateness_and_duplicates_do_not_change_outcomes() -> None:
    rng = random.Random(7)
    events = _stream(rng, 300)
    expected = _outcomes(events)
    assert sum(r.converted for r in expected) > 20 and sum(r.clicked for r in expected) > 20
    # Shuffle with displacement well under the 5-minute lateness, and redeliver 20%.
    noisy = events + rng.sample(events, len(events) // 5)
    noisy.sort(key=lambda e: e.ts + rng.uniform(0, 2 * MIN))
    assert _outcomes(noisy) == expected


def test_state_stays_bounded_over_a_long_run() -> None:
    att_sessions: dict[str, SessionState] = {}
    att = Attributor(att_sessions, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS)
    closed = 0
    peak = 0
    # 24 hours, one new session a minute with an impression and sometimes a purchase.
    for minute in range(24 * 60):
        s = f"s{minute}"
        att.observe(imp(f"i{minute}", minute, s=s))
        if minute % 3 == 0:
            att.observe(buy(f"p{minute}", minute + 2, "ab", s=s))
        closed += len(att.advance())
        peak = max(peak, len(att_sessions))
    assert peak <= (WINDOW + LATENESS) // MIN + 5
    closed += len(att.advance(T0 + 48 * 60 * MIN))
    assert closed == 24 * 60 and att_sessions == {}
    assert att.counts["converted"] == 24 * 60 // 3


class ReadCounting(ChangelogMapping):
    """A changelog-like store that counts the states read (each read decodes one)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __getitem__(self, key: str) -> SessionState:
        state = super().__getitem__(key)
        self.reads.append(key)
        return state


def test_a_session_of_purchases_alone_is_deleted_unread_once_out_of_every_window() -> None:
    sessions = ReadCounting()
    att = Attributor(sessions, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS)
    assert att.advance(T0) == []  # the first advance indexes the store (empty here)
    assert att.observe(buy("p1", 0, "ab", s="alone")) == "applied"
    assert att.observe(buy("p2", 10, "cd", s="two")) == "applied"
    assert att.observe(imp("i1", 10, s="shown")) == "applied"
    assert att.observe(buy("p3", 20, "ab", s="two")) == "applied"
    assert sessions.reads == ["two"]  # p3 joins its session
    sessions.reads.clear()
    # Watermark at 45 min: "alone" (0 + 30) is out of every window and goes unread; "two" is
    # due (10 + 30) but its purchase at 20 could still be claimed: read, kept with it alone;
    # "shown" closes its impression.
    records = att.advance(T0 + 45 * MIN + LATENESS)
    assert [(r.impression_id, r.converted) for r in records] == [("i1", False)]
    assert "alone" not in sessions and sessions["two"].purchases[0].event_id == "p3"
    assert sorted(sessions.reads) == ["shown", "two", "two"]  # two closes read, one test read
    sessions.reads.clear()
    # A late impression that could have claimed p1 comes too late to reach it.
    assert att.observe(imp("late", -1, s="alone")) == "too_late"
    assert att.advance(T0 + 60 * MIN + LATENESS) == []
    assert len(sessions) == 0 and sessions.reads == []


class NoShortcut(Attributor):
    """Closes every session by reading it, as before the purchases-only shortcut."""

    def _schedule(self, session_id: str, state: SessionState) -> None:
        super()._schedule(session_id, state)
        self._purchases_only.pop(session_id, None)


def test_purchases_only_shortcut_changes_no_outcome_status_or_state() -> None:
    rng = random.Random(11)
    events = _stream(rng, 200)
    # Sessions of purchases alone, some with several purchases minutes apart.
    for n in range(200):
        start = rng.uniform(0, 180)
        events += [buy(f"b{n}-{k}", start + k * rng.uniform(0, 15), rng.choice(["ab", "cd"]),
                       s=f"b{n}") for k in range(rng.randint(1, 3))]
    events += rng.sample(events, len(events) // 5)  # redelivered
    # Delivered out of order: mostly within the lateness, some beyond, a few beyond the window.
    events.sort(key=lambda e: e.ts + rng.choice([MIN, 8 * MIN, 40 * MIN]) * rng.random())
    stores: list[dict[str, SessionState]] = [{}, {}]
    atts = [cls(store, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS)
            for cls, store in zip((Attributor, NoShortcut), stores, strict=True)]
    for n, e in enumerate(events):
        assert atts[0].observe(e) == atts[1].observe(e)
        if n % 7 == 0:
            assert atts[0].advance() == atts[1].advance()
            assert stores[0] == stores[1]
    assert atts[0].advance(T0 + 24 * 60 * MIN) == atts[1].advance(T0 + 24 * 60 * MIN)
    assert stores[0] == stores[1] == {}
    assert atts[0].counts == atts[1].counts
    counts = atts[0].counts
    assert counts["too_late"] > 0 and counts["late_applied"] > 0 and counts["converted"] > 20


class HeapOnly(Attributor):
    """Keeps every due time in the heap, as before the FIFO for entries in due order."""

    def _enqueue(self, due: int, session_id: str) -> None:
        heapq.heappush(self._heap, (due, session_id))


def test_the_due_queue_closes_what_a_heap_alone_closes() -> None:
    """Entries in due order go to a FIFO, the others to a heap: on a stream delivered out of
    order (both used), the same outcomes, statuses and state as with the heap alone."""
    rng = random.Random(5)
    events = _stream(rng, 300)
    events += rng.sample(events, len(events) // 5)  # redelivered
    events.sort(key=lambda e: e.ts + rng.choice([MIN, 8 * MIN, 40 * MIN]) * rng.random())
    stores: list[dict[str, SessionState]] = [{}, {}]
    atts = [cls(store, OFFERS, window_ms=WINDOW, allowed_lateness_ms=LATENESS)
            for cls, store in zip((Attributor, HeapOnly), stores, strict=True)]
    both_used = False
    for n, e in enumerate(events):
        assert atts[0].observe(e) == atts[1].observe(e)
        both_used |= bool(atts[0]._queue) and bool(atts[0]._heap)
        if n % 5 == 0:
            assert atts[0].advance() == atts[1].advance()
            assert stores[0] == stores[1]
    assert both_used and not atts[1]._queue
    assert atts[0].advance(T0 + 24 * 60 * MIN) == atts[1].advance(T0 + 24 * 60 * MIN)
    assert stores[0] == stores[1] == {}
    assert atts[0].counts == atts[1].counts and atts[0].counts["converted"] > 20


def test_a_state_of_purchases_alone_knows_its_newest_purchase() -> None:
    from streamer.rewards.attribution import PendingPurchase, Tombstone

    def bought(name: str, ts: int) -> PendingPurchase:
        return PendingPurchase(event_id=name, ts=ts, offer_id=None, lines=())

    alone = SessionState(purchases=(bought("a", T0 + 5), bought("b", T0 + 9), bought("c", T0 + 2)))
    assert alone.purchases_alone() == T0 + 9
    assert SessionState().purchases_alone() is None
    credited = msgspec.structs.replace(alone, consumed=(Tombstone(event_id="x", ts=T0),))
    assert credited.purchases_alone() is None
