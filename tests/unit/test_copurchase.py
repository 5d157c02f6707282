"""CoPurchaseStats: decay, evidence and score on hand-computed tables, bounds, assignment-only."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hyp_st

from streamer.copurchase import (
    TOTAL_KEY,
    TRIPLE_SEPARATOR,
    Candidate,
    CoPurchaseStats,
    Decayed,
    ItemStats,
)
from streamer.copurchase.decay import add_weight, value_at

DAY_MS = 86_400_000
T0 = 1_700_000_000_000
V = TypeVar("V")


def by_items(cands: list[Candidate]) -> dict[tuple[str, ...], Candidate]:
    return {c.items: c for c in cands}


# -- decay -------------------------------------------------------------------------------------


def test_decay_matches_closed_form() -> None:
    # Events of weight 1 at days 0, 1, 3 with a 2-day half-life, read at day 4:
    # 2**-2 + 2**-1.5 + 2**-0.5.
    hl = 2 * DAY_MS
    d = None
    for day in (0, 1, 3):
        d = add_weight(d, 1.0, T0 + day * DAY_MS, hl)
    expected = 2**-2 + 2**-1.5 + 2**-0.5
    assert value_at(d, T0 + 4 * DAY_MS, hl) == pytest.approx(expected, rel=1e-12)


def test_stats_counts_decay_with_half_life() -> None:
    stats = CoPurchaseStats({}, {}, half_life_s=86_400.0)
    stats.learn_order(["a", "b"], T0)
    stats.learn_order(["a", "c"], T0 + DAY_MS)
    now = T0 + 3 * DAY_MS
    assert stats.item_count("a", now) == pytest.approx(2**-3 + 2**-2)
    assert stats.item_count("b", now) == pytest.approx(2**-3)
    assert stats.order_total(now) == pytest.approx(2**-3 + 2**-2)
    assert stats.pair_count("a", "b", now) == pytest.approx(2**-3)
    assert stats.pair_count("c", "a", now) == pytest.approx(2**-2)
    assert stats.item_count("zzz", now) == 0.0


def test_out_of_order_events_give_the_same_state_as_in_order() -> None:
    events = [(["a", "b"], T0 + 5 * DAY_MS), (["a", "b", "c"], T0), (["a", "c"], T0 + DAY_MS)]
    in_order = CoPurchaseStats({}, {}, half_life_s=86_400.0)
    for items, ts in sorted(events, key=lambda e: e[1]):
        in_order.learn_order(items, ts)
    shuffled_items: dict[str, ItemStats] = {}
    shuffled = CoPurchaseStats(shuffled_items, {}, half_life_s=86_400.0)
    for items, ts in events:
        shuffled.learn_order(items, ts)
    now = T0 + 6 * DAY_MS
    for a, b in [("a", "b"), ("a", "c"), ("b", "c"), ("c", "a")]:
        assert shuffled.pair_count(a, b, now) == pytest.approx(in_order.pair_count(a, b, now))
    assert shuffled.item_count("a", now) == pytest.approx(in_order.item_count("a", now))
    assert shuffled.order_total(now) == pytest.approx(in_order.order_total(now))
    # The late events were worth less than a new one, and time did not run backwards.
    assert shuffled_items["a"].landmark_ms == T0 + 5 * DAY_MS
    assert shuffled.pair_count("a", "c", now) == pytest.approx(2**-6 + 2**-5)


def test_old_event_adds_a_smaller_weight() -> None:
    stats = CoPurchaseStats({}, {}, half_life_s=86_400.0)
    stats.learn_order(["a", "b"], T0 + 2 * DAY_MS)
    stats.learn_order(["a", "c"], T0)  # two days late
    now = T0 + 2 * DAY_MS
    assert stats.pair_count("a", "b", now) == pytest.approx(1.0)
    assert stats.pair_count("a", "c", now) == pytest.approx(0.25)


def test_landmark_renormalises_far_in_the_future_without_changing_values() -> None:
    items: dict[str, ItemStats] = {}
    stats = CoPurchaseStats(items, {}, half_life_s=1.0)
    stats.learn_order(["a", "b"], T0)
    stats.learn_order(["a", "c"], T0 + 10_000)  # 10 half-lives: no renormalisation yet
    assert items["a"].landmark_ms == T0
    stats.learn_order(["a", "c"], T0 + 100_000)  # 100 half-lives: landmark moves
    assert items["a"].landmark_ms == T0 + 100_000
    now = T0 + 100_000
    assert stats.pair_count("a", "c", now) == pytest.approx(1.0 + 2**-90)
    assert math.isfinite(items["a"].count) and items["a"].count < 2.0


# -- evidence and score on a hand-computed table ------------------------------------------------


def test_support_confidence_lift_and_score_hand_computed() -> None:
    # No decay to speak of (a 1000-day half-life over one minute). Orders:
    #   a b c, a b c, a b, a d, b d, e f  ->  n_a=4, n_b=4, n_c=2, n_d=2, N=6
    #   co(a,b)=3, co(a,c)=2, co(a,d)=1, triple (a,b,c)=... counted once both pairs are strong.
    stats = CoPurchaseStats(
        {}, {}, half_life_s=1000 * 86_400.0, prior_strength=2.0, triple_min_support=0.5
    )
    for i, order in enumerate(["abc", "abc", "ab", "ad", "bd", "ef"]):
        stats.learn_order(list(order), T0 + i)
    now = T0 + 6
    got = by_items(stats.candidates("a", now_ms=now, max_pairs=3, max_triples=1))
    m, n_a, total = 2.0, 4.0, 6.0
    table = {  # partner: (co-count, n_partner)
        "b": (3.0, 4.0),
        "c": (2.0, 2.0),
        "d": (1.0, 2.0),
    }
    for partner, (co, n_p) in table.items():
        c = got[("a", partner)]
        p = n_p / total
        assert c.support == pytest.approx(co, rel=1e-6)
        assert c.confidence == pytest.approx(co / n_a, rel=1e-6)
        assert c.lift == pytest.approx(co / n_a / p, rel=1e-6)
        assert c.score == pytest.approx((co + m * p) / (n_a + m), rel=1e-6)
    # Scores: b (3 + 4/3)/6 = 0.722, c (2 + 2/3)/6 = 0.444, d (1 + 2/3)/6 = 0.278.
    assert [c.items for c in stats.candidates("a", now_ms=now, max_pairs=3, max_triples=0)] == [
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
    ]
    # The triple (a, b, c): with min support 0.5 every partner of a is strong from the start,
    # so both "abc" orders count: support 2, confidence 2/4, lift 0.5 / (4/6 * 2/6).
    t = got[("a", "b", "c")]
    assert t.support == pytest.approx(2.0, rel=1e-6)
    assert t.confidence == pytest.approx(0.5, rel=1e-6)
    assert t.lift == pytest.approx(0.5 / (4 / 6 * 2 / 6), rel=1e-6)
    s_b, s_c = got[("a", "b")].score, got[("a", "c")].score
    assert t.score == pytest.approx((2.0 + m * s_b * s_c) / (n_a + m), rel=1e-6)


def test_rare_pair_does_not_outrank_a_well_supported_one() -> None:
    # "x" bought once with "rare" (confidence 1.0); "y" 40 times with "pop" out of 50.
    stats = CoPurchaseStats({}, {}, half_life_s=1000 * 86_400.0)
    stats.learn_order(["x", "rare"], T0)
    for i in range(50):
        stats.learn_order(["y", "pop"] if i < 40 else ["y", f"other{i}"], T0 + i)
    now = T0 + 60
    rare = stats.candidates("x", now_ms=now, max_pairs=1, max_triples=0)[0]
    strong = stats.candidates("y", now_ms=now, max_pairs=1, max_triples=0)[0]
    assert rare.confidence == pytest.approx(1.0)
    assert strong.confidence == pytest.approx(0.8)
    assert strong.score > rare.score


def test_ties_break_towards_popular_partners() -> None:
    stats = CoPurchaseStats({}, {}, half_life_s=1000 * 86_400.0)
    stats.learn_order(["a", "niche", "hit"], T0)
    for i in range(5):
        stats.learn_order(["hit", f"z{i}"], T0 + 1 + i)
    best = stats.candidates("a", now_ms=T0 + 10, max_pairs=1, max_triples=0)
    assert best[0].items == ("a", "hit")


def test_candidates_respect_limits_min_support_and_unknown_anchor() -> None:
    stats = CoPurchaseStats({}, {}, half_life_s=1000 * 86_400.0)
    for i in range(3):
        stats.learn_order(["a", "b", "c", "d"], T0 + i)
    stats.learn_order(["a", "e"], T0 + 3)
    cands = stats.candidates("a", now_ms=T0 + 4, max_pairs=2, max_triples=1)
    assert sum(len(c.items) == 2 for c in cands) == 2
    assert sum(len(c.items) == 3 for c in cands) == 1
    assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True)
    assert all(c.items[0] == "a" and len(set(c.items)) == len(c.items) for c in cands)
    supported = stats.candidates("a", now_ms=T0 + 4, max_pairs=5, max_triples=0, min_support=2)
    assert {c.items[1] for c in supported} == {"b", "c", "d"}
    assert stats.candidates("nope", now_ms=T0) == []


def test_learn_anchor_and_order_total_equal_learn_order() -> None:
    whole = CoPurchaseStats({}, {})
    split_items: dict[str, ItemStats] = {}
    split_counts: dict[str, Decayed] = {}
    split = CoPurchaseStats(split_items, split_counts)
    order = ["a", "b", "c", "b"]
    whole.learn_order(order, T0)
    split.learn_order_total(T0)
    for anchor in ("c", "a", "b"):  # any agent order
        split.learn_anchor(anchor, order, T0)
    for a in "abc":
        assert split.candidates(a, now_ms=T0) == whole.candidates(a, now_ms=T0)
    assert split.order_total(T0) == 1.0
    assert "a" not in split_items["a"].partners


def test_weight_scales_a_secondary_signal() -> None:
    stats = CoPurchaseStats({}, {}, half_life_s=1000 * 86_400.0)
    stats.learn_order(["a", "b"], T0)
    stats.learn_anchor("a", ["c"], T0, weight=0.25)  # a co-view
    assert stats.pair_count("a", "c", T0) == pytest.approx(0.25)
    assert stats.item_count("a", T0) == pytest.approx(1.25)
    with pytest.raises(ValueError):
        stats.learn_anchor("a", ["c"], T0, weight=0.0)
    with pytest.raises(ValueError):
        stats.learn_order(["a", "c"], T0, weight=float("nan"))


def test_values_round_trip_through_msgspec() -> None:
    items: dict[str, ItemStats] = {}
    counts: dict[str, Decayed] = {}
    stats = CoPurchaseStats(items, counts, triple_min_support=0.5)
    stats.learn_order(["a", "b", "c"], T0)
    assert items["a"].triples == {"b" + TRIPLE_SEPARATOR + "c": 1.0}
    for value in items.values():
        assert msgspec.json.decode(msgspec.json.encode(value), type=ItemStats) == value
    for count in counts.values():
        assert msgspec.json.decode(msgspec.json.encode(count), type=Decayed) == count
    assert TOTAL_KEY in counts


# -- bounds ------------------------------------------------------------------------------------


def test_state_never_exceeds_bounds() -> None:
    items: dict[str, ItemStats] = {}
    counts: dict[str, Decayed] = {}
    top_k, top_k_triples = 8, 6
    stats = CoPurchaseStats(
        items, counts, top_k=top_k, top_k_triples=top_k_triples, triple_min_support=0.5
    )
    catalogue = [f"i{n}" for n in range(40)]
    for t in range(400):
        # Deterministic, ever-changing baskets: many more distinct pairs than the bounds hold.
        basket = [catalogue[(t * 7 + j * j * 3) % 40] for j in range(6)]
        stats.learn_order(basket, T0 + t * 1000)
        for s in items.values():
            assert len(s.partners) <= top_k
            assert len(s.triples) <= top_k_triples
    assert len(items) <= len(catalogue)
    assert len(counts) <= len(catalogue) + 1


def test_global_budget_shrinks_capacity() -> None:
    items: dict[str, ItemStats] = {}
    stats = CoPurchaseStats(items, {}, top_k=64, min_k=4, max_partner_entries=200)
    catalogue = [f"i{n}" for n in range(100)]
    for t in range(300):
        basket = [catalogue[(t * 13 + j * 17) % 100] for j in range(8)]
        stats.learn_order(basket, T0 + t)
    # 100 anchors share 200 entries: capacity 4 per anchor once all are tracked (entries of
    # anchors not updated since their capacity shrank may be larger, but never above top_k).
    assert all(len(s.partners) <= 64 for s in items.values())
    assert sum(len(s.partners) for s in items.values()) <= 100 * 8
    with pytest.raises(ValueError):
        CoPurchaseStats({}, {}, top_k=1)


# -- assignment only ---------------------------------------------------------------------------


class RecordingMapping(MutableMapping[str, V], Generic[V]):
    """A dict that records writes and keeps the encoding of every value it hands out."""

    def __init__(self) -> None:
        self.data: dict[str, V] = {}
        self.writes: list[str] = []
        self.handed_out: list[tuple[V, bytes]] = []

    def __getitem__(self, key: str) -> V:
        value = self.data[key]
        self.handed_out.append((value, msgspec.json.encode(value)))
        return value

    def __setitem__(self, key: str, value: V) -> None:
        self.writes.append(key)
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        raise AssertionError("CoPurchaseStats never deletes")

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_every_change_goes_through_setitem() -> None:
    items: RecordingMapping[ItemStats] = RecordingMapping()
    counts: RecordingMapping[Decayed] = RecordingMapping()
    stats = CoPurchaseStats(items, counts, top_k=4, top_k_triples=2, triple_min_support=0.5)
    baskets = ["abcde", "abf", "acg", "bcd", "abc", "aeh", "abcdefgh"]
    for t, basket in enumerate(baskets * 3):
        before_items = {k: msgspec.json.encode(v) for k, v in items.data.items()}
        before_counts = {k: msgspec.json.encode(v) for k, v in counts.data.items()}
        items.writes.clear()
        counts.writes.clear()
        stats.learn_order(list(basket), T0 + (t % 5) * 1000)  # some out of order
        for mapping, before in ((items, before_items), (counts, before_counts)):
            changed = {
                k for k, v in mapping.data.items() if before.get(k) != msgspec.json.encode(v)
            }
            assert changed <= set(mapping.writes)
        stats.candidates("a", now_ms=T0 + 5000)
    # No value read from a mapping was ever modified afterwards.
    for mapping in (items, counts):
        assert mapping.handed_out
        for value, encoded in mapping.handed_out:
            assert msgspec.json.encode(value) == encoded


def test_learn_anchor_touches_one_key_per_mapping() -> None:
    items: RecordingMapping[ItemStats] = RecordingMapping()
    counts: RecordingMapping[Decayed] = RecordingMapping()
    stats = CoPurchaseStats(items, counts)
    stats.learn_anchor("a", ["b", "c"], T0)
    stats.learn_anchor("a", ["b"], T0 + 1)
    assert items.writes == ["a", "a"]
    assert counts.writes == ["a", "a"]
    assert not counts.handed_out  # learn_anchor never reads counts


def test_learning_in_place_updates_its_own_tables_until_released() -> None:
    items: dict[str, ItemStats] = {}
    stats = CoPurchaseStats(items, {}, in_place=True)
    stats.learn_anchor("a", ["b", "c"], T0)
    first = items["a"]
    stats.learn_anchor("a", ["b", "d"], T0)
    assert items["a"] is not first and items["a"].partners is first.partners  # its own: updated
    stats.release()
    shared = items["a"]
    encoded = msgspec.json.encode(shared)
    stats.learn_anchor("a", ["c", "e"], T0)
    assert items["a"].partners is not shared.partners  # shared since release(): copied
    assert msgspec.json.encode(shared) == encoded
    assert items["a"].partners == {"b": 2.0, "c": 2.0, "d": 1.0, "e": 1.0}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_learning_in_place_gives_what_copying_gives_and_spares_what_was_released(
    seed: int,
) -> None:
    rng = random.Random(seed)
    # Small tables (purges), a short half-life with jumps of many half-lives (renormalisation)
    # and time going back now and then (late orders).
    kwargs = {"half_life_s": 60.0, "top_k": 6, "top_k_triples": 4, "triple_min_support": 0.5}
    copied = CoPurchaseStats({}, {}, **kwargs)  # type: ignore[arg-type]
    items: RecordingMapping[ItemStats] = RecordingMapping()
    counts: RecordingMapping[Decayed] = RecordingMapping()
    in_place = CoPurchaseStats(items, counts, in_place=True, **kwargs)  # type: ignore[arg-type]
    copied_items = copied._items  # type: ignore[attr-defined]
    released: list[tuple[ItemStats, bytes]] = []
    reused = 0
    ts = T0
    for n in range(400):
        ts += rng.choice([0, 1_000, 5_000, -3_000, 60_000 * 40]) if n % 50 else 1
        basket = rng.sample("abcdefghijklmnop", rng.randint(1, 7))
        before = {k: v.partners for k, v in items.data.items()}
        copied.learn_order(basket, ts)
        in_place.learn_order(basket, ts)
        reused += sum(items.data[k].partners is before.get(k) for k in basket[:1])
        for key, value in copied_items.items():
            assert msgspec.json.encode(items.data[key]) == msgspec.json.encode(value)
        assert counts.data == copied._counts  # type: ignore[attr-defined]
        anchor = rng.choice(basket)
        assert copied.candidates(anchor, now_ms=ts) == in_place.candidates(anchor, now_ms=ts)
        if rng.random() < 0.1:
            in_place.release()
            released += [(v, msgspec.json.encode(v)) for v in items.data.values()]
    assert reused > 50  # it did learn in place
    assert released
    for value, encoded in released:  # nothing written before a release changed after it
        assert msgspec.json.encode(value) == encoded


# -- triples ---------------------------------------------------------------------------------


def test_untracked_best_partners_are_still_a_triple_candidate() -> None:
    # A young anchor: b and c each bought with it once, never together, nothing tracked.
    m = 1.0
    stats = CoPurchaseStats({}, {}, half_life_s=1000 * 86_400.0, prior_strength=m)
    stats.learn_order(["a", "b"], T0)
    stats.learn_order(["a", "c"], T0 + 1)
    got = by_items(stats.candidates("a", now_ms=T0 + 2, max_pairs=2, max_triples=1))
    t = got[("a", "b", "c")]
    p = got[("a", "b")].score * got[("a", "c")].score
    assert t.support == 0.0
    assert t.score == pytest.approx(m * p / (2.0 + m), rel=1e-6)


def test_observed_triple_beats_an_unseen_one_with_equal_pairs() -> None:
    stats = CoPurchaseStats({}, {}, half_life_s=1000 * 86_400.0, triple_min_support=0.5)
    for i, order in enumerate(["abc", "ad", "ad", "ab", "ac"]):
        stats.learn_order(list(order), T0 + i)
    best = stats.candidates("a", now_ms=T0 + 9, max_pairs=0, max_triples=1)
    assert [c.items for c in best] == [("a", "b", "c")]


def test_engine_config_sets_triple_learning() -> None:
    from streamer.engine import Engine, EngineConfig
    from streamer.events import OrderLine, PurchaseEvent

    def triple_support(config: EngineConfig) -> float:
        engine = Engine.in_memory(config)
        for n in range(3):
            engine.handle_purchase(
                PurchaseEvent(
                    event_id=f"e{n}",
                    ts=T0 + n,
                    user_id="u",
                    session_id="s",
                    order_id=f"o{n}",
                    items=[OrderLine(item_id=i, quantity=1, unit_price=1.0) for i in "abc"],
                )
            )
        cands = engine.stats.candidates("a", now_ms=T0 + 3, max_pairs=0, max_triples=1)
        return cands[0].support

    from_first_order = EngineConfig(min_interval_ms=0, triple_min_orders=0)
    assert triple_support(from_first_order) == pytest.approx(2.0)
    old_enough_at_3 = EngineConfig(min_interval_ms=0, triple_min_orders=2.5)
    assert triple_support(old_enough_at_3) == pytest.approx(1.0)
    assert triple_support(EngineConfig(min_interval_ms=0, triple_partners=0)) == 0.0
    assert triple_support(EngineConfig(min_interval_ms=0, triple_min_orders=5)) == 0.0


def test_young_anchors_learn_no_triples() -> None:
    items: dict[str, ItemStats] = {}
    stats = CoPurchaseStats(items, {}, half_life_s=1000 * 86_400.0, triple_min_orders=2.5)
    for i in range(4):
        stats.learn_order(["a", "b", "c"], T0 + i)
    key = "b" + TRIPLE_SEPARATOR + "c"
    # Strong from the 2nd order, old enough from the 3rd: counted in orders 3 and 4.
    assert items["a"].triples == {key: pytest.approx(2.0)}
    t = stats.candidates("a", now_ms=T0 + 4, max_pairs=0, max_triples=1)[0]
    assert t.items == ("a", "b", "c") and t.support == pytest.approx(2.0)


def test_triple_ties_break_the_same_way_in_every_process() -> None:
    # Four partners with identical evidence: the 3-item choice must not follow set order.
    stats = CoPurchaseStats({}, {}, half_life_s=1000 * 86_400.0)
    stats.learn_order(["a", "d", "c", "b", "e"], T0)
    best = stats.candidates("a", now_ms=T0 + 1, max_pairs=0, max_triples=1)
    assert [c.items for c in best] == [("a", "b", "c")]


@given(
    orders=hyp_st.lists(
        hyp_st.lists(hyp_st.integers(0, 119), min_size=1, max_size=110, unique=True),
        min_size=1,
        max_size=12,
    ),
)
@settings(max_examples=40, deadline=None)
def test_strong_partners_of_an_order_are_its_heaviest_few(orders: list[list[int]]) -> None:
    # The definition: an order's strong partners are those whose co-count (this order
    # included) reaches the threshold; when more than ``triple_partners`` do, the heaviest,
    # ties going to the partners listed first. Orders of up to 110 partners take both ways of
    # finding the cut-off (a sort for few partners, a selection for many).
    items: dict[str, ItemStats] = {}
    stats = CoPurchaseStats(items, {}, top_k_triples=100_000, triple_partners=8)
    co: dict[str, float] = {}
    n = 0.0
    for order in orders:
        partners = [f"p{i:03d}" for i in order]
        n += 1.0
        for p in partners:
            co[p] = co.get(p, 0.0) + 1.0
        threshold = max(1.5, 0.1 * n)
        strong = [p for p in partners if co[p] >= threshold]
        if len(strong) > 8:
            position = {p: i for i, p in enumerate(partners)}
            strong = sorted(strong, key=lambda p: (-co[p], position[p]))[:8]
        expected = {TRIPLE_SEPARATOR.join(bc) for bc in itertools.combinations(sorted(strong), 2)}
        before = dict(items["a"].triples) if "a" in items else {}
        stats.learn_anchor("a", partners, T0)  # one timestamp: decayed counts are plain counts
        after = items["a"].triples
        assert {k for k, v in after.items() if v != before.get(k, 0.0)} == expected
        assert all(after[k] == before.get(k, 0.0) + 1.0 for k in expected)
