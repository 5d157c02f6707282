"""Co-view and co-cart: a session's clicks as a weighted pseudo-order (copurchase.sessions)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.copurchase import CoPurchaseStats, SessionItemsTracker, session_key
from streamer.engine import CLICKS_SOURCE, Engine, EngineConfig
from streamer.events import ClickEvent, OrderLine, PurchaseEvent

T0 = 1_700_000_000_000


def click(n: int, item: str, kind: str = "add_to_cart", *, session: str = "s",
          ts: int = T0) -> ClickEvent:
    return ClickEvent(event_id=f"c{n}", ts=ts, user_id="u", session_id=session, item_id=item,
                      kind=kind)  # type: ignore[arg-type]


def engine(**config: float) -> Engine:
    return Engine.in_memory(EngineConfig(min_interval_ms=0, min_support=0.0, **config))


# -- the tracker -----------------------------------------------------------------------------


def tracker(sessions: dict | None = None, **kw: int) -> SessionItemsTracker:
    args = {"gap_ms": 1_000, "max_items": 3, "capacity": 100} | kw
    return SessionItemsTracker({} if sessions is None else sessions, **args)


def test_items_join_once_in_click_order() -> None:
    t = tracker()
    joins = [t.observe("s", "cart", i, ts_ms=T0 + n, offset=n) for n, i in enumerate("abab")]
    assert joins[0] == ("a", [], True)
    assert joins[1] == ("b", ["a"], False)
    assert joins[2:] == [None, None]


def test_the_same_message_again_returns_the_same_join() -> None:
    t = tracker()
    t.observe("s", "cart", "a", ts_ms=T0, offset=4)
    first = t.observe("s", "cart", "b", ts_ms=T0, offset=5)
    assert t.observe("s", "cart", "a", ts_ms=T0, offset=4) == ("a", [], True)
    assert t.observe("s", "cart", "b", ts_ms=T0, offset=5) == first
    assert t.observe("s", "cart", "b", ts_ms=T0, offset=9) is None  # another click of b
    assert t.observe("s", "cart", "b", ts_ms=T0) is None  # offset unknown: never a retry


def test_a_session_holds_at_most_max_items() -> None:
    t = tracker(max_items=3)
    joins = [t.observe("s", "cart", i, ts_ms=T0) for i in "abcde"]
    assert [j.item for j in joins if j is not None] == ["a", "b", "c"]


def test_a_pause_longer_than_the_gap_starts_another_pseudo_order() -> None:
    t = tracker(gap_ms=1_000)
    t.observe("s", "cart", "a", ts_ms=T0)
    assert t.observe("s", "cart", "b", ts_ms=T0 + 1_000) == ("b", ["a"], False)
    assert t.observe("s", "cart", "a", ts_ms=T0 + 2_001) == ("a", [], True)


def test_a_redelivered_click_of_an_earlier_pseudo_order_does_not_join_the_newer_one() -> None:
    """After a crash, clicks are read again from the committed offset while the table already
    holds what came after: ``a`` (offset 10) belonged to a pseudo-order the gap closed before
    ``b`` (offset 11) opened this one, so it joins nothing and ``c`` never pairs with it."""
    t = tracker(gap_ms=1_000)
    t.observe("s", "cart", "a", ts_ms=T0, offset=10)
    t.observe("s", "cart", "b", ts_ms=T0 + 5_000, offset=11)
    assert t.observe("s", "cart", "a", ts_ms=T0, offset=10) is None
    assert t.observe("s", "cart", "c", ts_ms=T0 + 5_100, offset=12) == ("c", ["b"], False)
    assert list(t.sessions[session_key("s", "cart")].items) == ["b", "c"]


def test_signals_and_sessions_are_kept_apart() -> None:
    t = tracker()
    t.observe("s", "view", "a", ts_ms=T0)
    assert t.observe("s", "cart", "b", ts_ms=T0) == ("b", [], True)
    assert t.observe("other", "view", "b", ts_ms=T0) == ("b", [], True)
    assert set(t.sessions) == {session_key("s", "view"), session_key("s", "cart"),
                               session_key("other", "view")}


def test_idle_and_surplus_sessions_are_forgotten_per_partition() -> None:
    sessions: dict = {}
    t = tracker(sessions, gap_ms=1_000, capacity=2)
    t.observe("old", "cart", "a", ts_ms=T0, partition=0)
    t.observe("other-partition", "cart", "a", ts_ms=T0, partition=1)
    t.observe("new", "cart", "a", ts_ms=T0 + 1_001, partition=0)  # "old" is over: deleted
    assert set(sessions) == {session_key("other-partition", "cart"), session_key("new", "cart")}
    t.observe("x", "cart", "a", ts_ms=T0 + 1_002, partition=0)
    t.observe("y", "cart", "a", ts_ms=T0 + 1_003, partition=0)  # capacity 2: "new" goes
    assert {k for k, v in sessions.items() if v.partition == 0} == {
        session_key("x", "cart"), session_key("y", "cart")}
    assert len(t) == 3


def test_rebuild_recreates_the_eviction_index() -> None:
    sessions: dict = {}
    tracker(sessions, capacity=2).observe("a", "cart", "i", ts_ms=T0)
    tracker(sessions, capacity=2).observe("b", "cart", "i", ts_ms=T0 + 1)
    t = tracker(sessions, capacity=2)  # as after a restart: the index comes from the mapping
    assert len(t) == 2
    t.observe("c", "cart", "i", ts_ms=T0 + 2)
    assert set(sessions) == {session_key("b", "cart"), session_key("c", "cart")}


def test_values_are_never_modified_in_place() -> None:
    sessions: dict = {}
    t = tracker(sessions)
    t.observe("s", "cart", "a", ts_ms=T0)
    before = sessions[session_key("s", "cart")]
    kept = dict(before.items)
    t.observe("s", "cart", "b", ts_ms=T0 + 1)
    assert before.items == kept and sessions[session_key("s", "cart")] is not before


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        tracker(max_items=1)
    with pytest.raises(ValueError):
        tracker(gap_ms=0)


# -- through the engine ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=20),
       st.sampled_from([0.05, 0.3, 1.0]))
def test_a_session_counts_as_one_order_of_its_weight(carts: list[str], weight: float) -> None:
    e = engine(co_cart_weight=weight)
    for n, item in enumerate(carts):
        e.handle_click(click(n, item))
    whole = CoPurchaseStats({}, {}, half_life_s=e.config.half_life_s)
    whole.learn_order(carts, T0, weight)
    got, want = e.stats, whole
    assert got.order_total(T0) == pytest.approx(want.order_total(T0))
    for a in set(carts):
        assert got.item_count(a, T0) == pytest.approx(want.item_count(a, T0))
        for b in set(carts) - {a}:
            assert got.pair_count(a, b, T0) == pytest.approx(want.pair_count(a, b, T0))


def test_co_carts_make_offers_and_views_weigh_separately() -> None:
    e = engine(co_cart_weight=0.5, co_view_weight=0.1)
    for n, item in enumerate(["tea", "cup"]):  # bought alone: prices known, no pairs
        e.handle_purchase(PurchaseEvent(
            event_id=f"p{n}", ts=T0, user_id="u", session_id=f"p{n}", order_id=f"o{n}",
            items=[OrderLine(item_id=item, quantity=1, unit_price=2.0)]))
    assert e.live_offer("tea") is None
    e.handle_click(click(1, "tea"))
    offers = e.handle_click(click(2, "cup"))
    assert {o.anchor_item_id for o in offers} == {"tea", "cup"}
    assert e.live_offer("tea").variants[0].items == ["tea", "cup"]
    e.handle_click(click(3, "tea", "view", session="v"))
    e.handle_click(click(4, "milk", "click", session="v"))
    assert e.stats.pair_count("tea", "cup", T0) == pytest.approx(0.5)
    assert e.stats.pair_count("tea", "milk", T0) == pytest.approx(0.1)
    assert e.stats.item_count("tea", T0) == pytest.approx(1.6)
    assert e.stats.order_total(T0) == pytest.approx(2.6)


def test_a_clicked_price_makes_an_item_offerable() -> None:
    e = engine(co_cart_weight=1.0)
    e.handle_click(msgspec.structs.replace(click(1, "tea"), price=3.0))
    e.handle_click(click(2, "cup"))  # no price shown: cup cannot be offered yet
    assert e.live_offer("tea") is None and e.state.catalog == {"tea": 3.0}
    e.handle_click(msgspec.structs.replace(click(3, "cup", session="t"), price=2.0))
    e.handle_click(click(4, "tea", session="t"))
    assert e.live_offer("tea").variants[0].items == ["tea", "cup"]
    assert e.state.catalog == {"tea": 3.0, "cup": 2.0}


def test_without_a_weight_clicks_teach_nothing() -> None:
    e = engine()
    for n, kind in enumerate(["view", "click", "add_to_cart", "offer_impression"]):
        assert e.handle_click(click(n, f"i{n}", kind)) == []
    assert e.state.items == {} and e.state.sessions == {}


def test_offer_clicks_and_impressions_are_not_session_items() -> None:
    e = engine(co_view_weight=1.0, co_cart_weight=1.0)
    e.handle_click(click(1, "tea", "offer_click"))
    e.handle_click(click(2, "cup", "offer_impression"))
    assert e.state.items == {} and e.state.sessions == {}


def test_a_redelivered_click_is_learned_once() -> None:
    e = engine(co_cart_weight=1.0)
    first = e.session_baskets(click(1, "tea"), partition=2, offset=10)
    baskets = e.session_baskets(click(2, "cup"), partition=2, offset=11)
    assert {b.source for b in first + baskets} == {CLICKS_SOURCE + 2}
    assert [(b.anchor, b.partners, b.count_anchor) for b in baskets] == [
        ("cup", ["tea"], True), ("tea", ["cup"], False)]
    e.learn_baskets(first + baskets)
    again = e.session_baskets(click(2, "cup"), partition=2, offset=11)  # after a crash
    assert again == baskets
    _, redelivered = e.learn_baskets(again)
    assert redelivered == len(again)
    assert e.stats.pair_count("tea", "cup", T0) == pytest.approx(1.0)
    assert e.stats.item_count("tea", T0) == pytest.approx(1.0)


def test_learn_anchor_without_counting_the_anchor() -> None:
    stats = CoPurchaseStats({}, {})
    stats.learn_anchor("a", ["b"], T0)
    stats.learn_anchor("a", ["c"], T0, count_anchor=False)
    assert stats.item_count("a", T0) == pytest.approx(1.0)
    assert stats.pair_count("a", "c", T0) == pytest.approx(1.0)
