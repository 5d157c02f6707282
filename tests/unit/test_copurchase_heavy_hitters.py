"""The heavy-hitter table's error bound, as a property over arbitrary weighted streams."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.copurchase import CoPurchaseStats, ItemStats, purge

T0 = 1_700_000_000_000

streams = st.lists(
    st.tuples(st.sampled_from([f"k{i}" for i in range(30)]), st.floats(0.01, 10.0)),
    min_size=1,
    max_size=300,
)


@given(stream=streams, capacity=st.integers(2, 12))
@settings(max_examples=200, deadline=None)
def test_misra_gries_error_bound(stream: list[tuple[str, float]], capacity: int) -> None:
    table: dict[str, float] = {}
    offset = 0.0
    true: dict[str, float] = {}
    for key, w in stream:
        true[key] = true.get(key, 0.0) + w
        table = {**table, key: table.get(key, 0.0) + w}
        table, offset = purge(table, offset, capacity)
        assert len(table) <= capacity
    total = sum(w for _, w in stream)
    eps = 1e-9 * total
    assert offset <= total / (capacity // 2 + 1) + eps
    for key, t in true.items():
        est = table.get(key, 0.0)
        assert est <= t + eps  # a lower bound ...
        assert t - est <= offset + eps  # ... short by at most the offset
    for key, est in table.items():
        assert est > 0.0 and key in true


@given(
    baskets=st.lists(
        st.lists(st.sampled_from("abcdefghijkl"), min_size=2, max_size=8), min_size=1, max_size=60
    ),
    top_k=st.integers(2, 8),
)
@settings(max_examples=100, deadline=None)
def test_stats_pair_counts_within_bound(baskets: list[list[str]], top_k: int) -> None:
    # One timestamp, so decayed counts equal plain counts.
    items: dict[str, ItemStats] = {}
    stats = CoPurchaseStats(items, {}, top_k=top_k)
    true: dict[tuple[str, str], int] = {}
    for basket in baskets:
        stats.learn_order(basket, T0)
        distinct = set(basket)
        for a in distinct:
            for b in distinct - {a}:
                true[a, b] = true.get((a, b), 0) + 1
    for anchor, s in items.items():
        assert len(s.partners) <= top_k
        error = stats.pair_error(anchor, T0)
        n_partner_weight = sum(c for (a, _), c in true.items() if a == anchor)
        assert error <= n_partner_weight / (top_k // 2 + 1) + 1e-9
        for (a, b), c in true.items():
            if a == anchor:
                est = stats.pair_count(a, b, T0)
                assert est <= c + 1e-9
                assert c - est <= error + 1e-9


def reference_purge(
    table: dict[str, float], offset: float, capacity: int
) -> tuple[dict[str, float], float]:
    """The purge by its definition: a full sort finds the cut-off."""
    if len(table) <= capacity:
        return table, offset
    delta = sorted(table.values(), reverse=True)[max(capacity // 2, 1)]
    return {k: v - delta for k, v in table.items() if v > delta}, offset + delta


@given(
    weights=st.lists(
        st.one_of(st.sampled_from([0.5, 1.0, 2.0]), st.floats(0.01, 100.0)),
        min_size=1,
        max_size=1500,
    ),
    capacity=st.integers(2, 1200),
)
@settings(max_examples=150, deadline=None)
def test_purge_equals_its_definition_on_small_and_large_tables(
    weights: list[float], capacity: int
) -> None:
    # Large tables find the cut-off by selection, small ones by sorting: the same table, in the
    # same key order, either way (ties included: a few repeated weights).
    table = {f"k{i}": w for i, w in enumerate(weights)}
    got, offset = purge(table, 0.25, capacity)
    want, want_offset = reference_purge(table, 0.25, capacity)
    assert list(got.items()) == list(want.items())
    assert offset == want_offset
