"""The rank cache: what it answers must be exactly what ranking the whole table answers."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as hyp_st

from streamer.copurchase import CoPurchaseStats, Decayed, HeaviestCache, ItemStats
from streamer.copurchase.ranking import heaviest

T0 = 1_700_000_000_000
DAY = 86_400_000

# A step: the keys an order grows (indices into a small key space, so keys recur), by how
# much (few distinct amounts, so equal weights are common), and whether to query after it.
steps_strategy = hyp_st.lists(
    hyp_st.tuples(
        hyp_st.lists(hyp_st.integers(0, 90), max_size=9, unique=True),
        hyp_st.sampled_from([0.25, 0.5, 1.0, 1.5]),
        hyp_st.integers(1, 20),
    ),
    min_size=1,
    max_size=60,
)


def test_heaviest_is_nlargest_on_every_size() -> None:
    for n in (0, 1, 5, 63, 64, 65, 200, 1024):
        table = {f"k{i}": float((i * 7) % 5) for i in range(n)}
        for k in (1, 3, 12, n, n + 2):
            assert heaviest(table, k) == heapq.nlargest(k, table.items(), key=lambda kv: kv[1])


@given(steps=steps_strategy, depth=hyp_st.sampled_from([1, 2, 4, 16]))
@settings(max_examples=300, deadline=None)
def test_cache_follows_growth_exactly_by_copy_and_in_place(
        steps: list[tuple[list[int], float, int]], depth: int) -> None:
    copies, in_place = HeaviestCache(depth=depth), HeaviestCache(depth=depth)
    table: dict[str, float] = {}
    own: dict[str, float] = {}  # the same weights, one dict updated in place
    for indices, amount, k in steps:
        keys = [f"p{i}" for i in indices]
        grown = table.copy()
        grown.update({key: grown.get(key, 0.0) + amount for key in keys})
        copies.grown("a", table, grown, keys)
        table = grown
        new_keys = {key for key in keys if key not in own}
        own.update({key: own.get(key, 0.0) + amount for key in keys})
        in_place.grown("a", own, own, keys, new_keys)
        assert copies.heaviest("a", table, k) == heaviest(table, k)
        assert in_place.heaviest("a", own, k) == heaviest(own, k)
        # The same top kept: in place costs no more full rankings than copies do.
        assert [e[1:] for e in in_place._entries.values()] == \
            [e[1:] for e in copies._entries.values()]


def test_cache_ignores_an_entry_for_another_table() -> None:
    cache = HeaviestCache(depth=2)
    table = {"a": 1.0, "b": 2.0}
    cache.heaviest("x", table, 2)
    rescaled = {k: v * 0.5 for k, v in table.items()}  # not a growth: no grown() call
    changed = {**rescaled, "a": 5.0}
    cache.grown("x", rescaled, changed, ["a"])  # the entry is for `table`: dropped
    assert len(cache) == 0
    assert cache.heaviest("x", changed, 2) == [("a", 5.0), ("b", 1.0)]


def test_cache_is_bounded() -> None:
    cache = HeaviestCache(depth=2, capacity=8)
    for i in range(50):
        cache.heaviest(f"x{i}", {"a": float(i)}, 1)
    assert len(cache) <= 8


@given(
    orders=hyp_st.lists(
        hyp_st.tuples(hyp_st.lists(hyp_st.integers(0, 40), min_size=2, max_size=12,
                                   unique=True),
                      hyp_st.integers(0, 400)),
        min_size=1, max_size=80,
    ),
)
@settings(max_examples=60, deadline=None)
def test_candidates_with_a_warm_cache_equal_a_cold_ranking(
        orders: list[tuple[list[int], int]]) -> None:
    # Small tables purge often and a short half-life renormalises: every way a table changes.
    items: dict[str, ItemStats] = {}
    counts: dict[str, Decayed] = {}
    options = dict(half_life_s=86_400.0, top_k=8, top_k_triples=6, triple_partners=4)
    warm = CoPurchaseStats(items, counts, **options)  # type: ignore[arg-type]
    for order, day in orders:
        names = [f"i{i}" for i in order]
        warm.learn_order(names, ts_ms=T0 + day * DAY // 4)
        now = T0 + day * DAY // 4
        cold = CoPurchaseStats(items, counts, **options)  # type: ignore[arg-type]
        for anchor in names[:3]:
            for min_support in (0.0, 1.5):
                query = dict(now_ms=now, max_pairs=3, max_triples=2, min_support=min_support)
                assert warm.candidates(anchor, **query) == cold.candidates(anchor, **query)
