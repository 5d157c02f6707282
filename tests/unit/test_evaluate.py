"""Prequential evaluation: metrics on hand-computed orders, baselines, JSON shape, intervals,
and an end-to-end run on the real bakery log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streamer.events import ClickEvent, OrderLine, PurchaseEvent
from streamer.replay.baselines import (
    CoCountBaseline,
    CoLiftBaseline,
    CoOccurrence,
    FrozenRulesBaseline,
    Offer,
    Order,
    PopularityBaseline,
    RandomPartnerBaseline,
)
from streamer.replay.evaluate import (
    METHOD_NAMES,
    EvaluationResult,
    evaluate,
    evaluate_file,
    run_evaluation,
)
from streamer.replay.report import result_table

T0 = 1_700_000_000_000
PRICES = {"a": 1.0, "b": 2.0, "c": 4.0}


def purchase(n: int, items: list[str], *, event_id: str | None = None) -> PurchaseEvent:
    return PurchaseEvent(
        event_id=event_id or f"e{n}",
        ts=T0 + n * 3_600_000,
        user_id="u",
        session_id=f"s{n}",
        order_id=f"o{n}",
        items=[OrderLine(item_id=i, quantity=1, unit_price=PRICES.get(i, 1.0)) for i in items],
    )


def order(n: int, items: list[str]) -> Order:
    return Order(n, f"o{n}", T0 + n, tuple(items), {i: PRICES.get(i, 1.0) for i in items})


# The hand-computed sequence. Co-counts before o1: ab=1; before o2: ab=2, ac=1, bc=1.
#   o0 [a b]:   nobody knows anything yet -> 2 misses, no offers.
#   o1 [a b c]: cooc_count offers a->b (hit, revenue 2), b->a (hit, 1), c: none.
#   o2 [a c]:   a->b (miss; triple b+c: one partner bought), c->a (tie a/b: earlier a; hit, 1;
#               triple a+b: one partner bought).
HAND = [["a", "b"], ["a", "b", "c"], ["a", "c"]]


@pytest.fixture(scope="module")
def hand() -> EvaluationResult:
    return evaluate([purchase(n, b) for n, b in enumerate(HAND)], dataset="hand", bootstrap=200)


def test_cooc_count_metrics_match_the_hand_computation(hand: EvaluationResult) -> None:
    assert (hand.orders, hand.anchors) == (3, 7)
    pair, triple = hand.methods["cooc_count"].pair, hand.methods["cooc_count"].triple
    assert pair.bundle_hit_rate == pytest.approx(3 / 7)
    assert pair.pair_hit_rate == pytest.approx(3 / 7)  # one partner: bundle hit == pair hit
    assert pair.coverage == pytest.approx(4 / 7)
    assert pair.captured_revenue == pytest.approx(4.0)
    assert pair.captured_revenue_per_anchor == pytest.approx(4.0 / 7)
    assert triple.bundle_hit_rate == 0.0
    assert triple.pair_hit_rate == pytest.approx(2 / 7)
    assert triple.coverage == pytest.approx(2 / 7)
    assert triple.captured_revenue == 0.0


def test_popularity_metrics_match_the_hand_computation(hand: EvaluationResult) -> None:
    # Before o1: a=1, b=1 orders -> a->b, b->a, c->a (+ triple a+b, all bought: revenue 3).
    # Before o2: a=2, b=2, c=1   -> a->b (miss; triple b+c half), c->a (hit; triple a+b half).
    pair, triple = hand.methods["popularity"].pair, hand.methods["popularity"].triple
    assert pair.bundle_hit_rate == pytest.approx(4 / 7)
    assert pair.coverage == pytest.approx(5 / 7)
    # o1's a, offered by b and by c, is revenue once: a (1) + b (2); o2's a (1). Counted per
    # anchor it was 5, more than some orders' revenue: money no order paid.
    assert pair.captured_revenue == pytest.approx(4.0)
    assert triple.bundle_hit_rate == pytest.approx(1 / 7)
    assert triple.pair_hit_rate == pytest.approx(3 / 7)
    assert triple.coverage == pytest.approx(3 / 7)
    assert triple.captured_revenue == pytest.approx(3.0)


def test_the_first_order_of_a_pair_is_never_a_hit() -> None:
    # Score before learn: nobody can predict a pair the first time it is bought; a repeated
    # pair is a hit from its second order on. Were an order learned before being scored,
    # every method would hit every anchor here.
    result = evaluate(
        [purchase(n, ["tea", "cup"]) for n in range(2)]
        + [purchase(2 + n, [f"new{n}", f"other{n}"]) for n in range(4)],
        dataset="first",
        bootstrap=50,
    )
    assert result.anchors == 12
    for name in ("streamer", "cooc_count", "random", "popularity"):
        assert result.methods[name].pair.bundle_hit_rate == pytest.approx(2 / 12), name
    assert result.methods["streamer"].pair.coverage == pytest.approx(2 / 12)
    assert result.methods["cooc_lift"].pair.bundle_hit_rate == 0.0  # support 2 < 3


def test_single_item_orders_are_learned_not_scored_and_duplicates_skipped() -> None:
    click = ClickEvent(event_id="c1", ts=T0, user_id="u", session_id="s", item_id="a", kind="view")
    events = [
        click,
        purchase(0, ["a"]),
        purchase(1, ["b", "c"]),
        purchase(1, ["b", "c"]),  # redelivered: same event id, skipped
        purchase(2, ["b", "c"]),
    ]
    result = evaluate(events, dataset="dup", bootstrap=50)
    assert (result.orders, result.anchors, result.learned_orders, result.events) == (2, 4, 3, 5)
    assert result.methods["cooc_count"].pair.bundle_hit_rate == pytest.approx(2 / 4)


def test_count_baselines_on_tiny_data() -> None:
    counts = CoOccurrence()
    by_count, by_lift = CoCountBaseline(counts), CoLiftBaseline(counts, min_support=2)
    popularity = PopularityBaseline(counts)
    baskets = [
        ["a", "p"],
        ["a", "p"],
        ["a", "p"],
        ["a", "r"],
        ["a", "r"],
        ["p", "x"],
        ["p", "y"],
        ["a", "z"],
    ]
    for n, b in enumerate(baskets):
        by_count.learn(order(n, b))
        by_lift.learn(order(n, b))  # the shared table counts each order once
    assert counts.orders == len(baskets)
    assert counts.pair_count("a", "p") == 3
    assert by_count.offer("a", T0) == Offer(("p",), ("p", "r"))
    # lift(a, r) = 2*8/(6*2) > lift(a, p) = 3*8/(6*5); z has one co-purchase < min_support.
    assert by_lift.offer("a", T0) == Offer(("r",), ("r", "p"))
    assert popularity.offer("a", T0) == Offer(("p",), ("p", "r"))
    assert popularity.offer("p", T0) == Offer(("a",), ("a", "r"))
    assert by_count.offers(["unknown", "x"], T0) == [Offer(None, None), Offer(("p",), None)]


def test_count_baselines_match_a_brute_force_over_every_item() -> None:
    """Random baskets over a small catalogue (many ties): after every order, the most bought
    items, co-counts, and the count and lift offers are those of a ranking over all items by
    score, ties to the item first bought earlier."""
    import random

    rng = random.Random(3)
    counts = CoOccurrence()
    by_count, by_lift = CoCountBaseline(counts), CoLiftBaseline(counts, min_support=2)
    first_bought: dict[str, int] = {}
    bought: dict[str, int] = {}
    together: dict[tuple[str, str], int] = {}

    def best_two(anchor: str, score: dict[str, float]) -> Offer:
        ranked = sorted(score, key=lambda b: (-score[b], first_bought[b]))
        return Offer(tuple(ranked[:1]) or None, tuple(ranked[:2]) if len(ranked) > 1 else None)

    for n in range(300):
        basket = list(dict.fromkeys(rng.choices("abcdefghijkl", k=rng.randint(1, 5))))
        counts.learn(order(n, basket))
        for i in basket:
            first_bought.setdefault(i, len(first_bought))
            bought[i] = bought.get(i, 0) + 1
            for j in basket:
                if i != j:
                    together[i, j] = together.get((i, j), 0) + 1
        assert counts.most_bought == sorted(bought, key=lambda i: (-bought[i], first_bought[i]))[:3]
        for a in first_bought:
            pairs = {b: together[a, b] for b in first_bought if (a, b) in together}
            assert all(counts.pair_count(a, b) == c for b, c in pairs.items())
            assert by_count.offer(a, T0) == best_two(a, {b: float(c) for b, c in pairs.items()})
            lifts = {b: c / bought[b] for b, c in pairs.items() if c >= 2}
            assert by_lift.offer(a, T0) == best_two(a, lifts)


def test_random_baseline_is_seeded_and_only_offers_co_purchased_items() -> None:
    baskets = [["a", "b", "c", "d"], ["e", "f"], ["a", "g"]]

    def draws(seed: int) -> list[Offer]:
        rnd = RandomPartnerBaseline(CoOccurrence(), seed=seed)
        for n, b in enumerate(baskets):
            rnd.learn(order(n, b))
        return [rnd.offer("a", T0) for _ in range(30)]

    first = draws(7)
    assert first == draws(7)
    partners = {p for offer in first for p in (*offer.pair, *offer.triple)}
    assert partners == {"b", "c", "d", "g"}
    assert all(offer.triple[0] != offer.triple[1] for offer in first)


def test_frozen_rules_are_mined_once_on_the_training_slice() -> None:
    frozen = FrozenRulesBaseline(train_orders=10, support_grid=(0.2,), confidence_grid=(0.1,))
    training = [["a", "b", "c"]] * 6 + [["a", "c"]] * 4
    for n, b in enumerate(training):
        assert frozen.offer("a", T0) == Offer(None, None)  # nothing until the slice is mined
        frozen.learn(order(n, b))
    assert frozen.offer("a", T0) == Offer(("c",), ("b", "c"))
    for n in range(50):  # frozen: later orders change nothing
        frozen.learn(order(10 + n, ["a", "z"]))
    assert frozen.offer("a", T0) == Offer(("c",), ("b", "c"))
    assert frozen.offer("z", T0) == Offer(None, None)
    described = frozen.describe()
    assert described["min_support"] == 0.2 and described["min_confidence"] == 0.1
    assert described["tuning"] and described["rules"] > 0


def test_json_shape_and_intervals(hand: EvaluationResult) -> None:
    doc = json.loads(hand.to_json())
    assert doc["dataset"] == "hand" and doc["orders"] == 3
    assert list(doc["methods"]) == list(METHOD_NAMES)
    keys = {"bundle_hit_rate", "pair_hit_rate", "captured_revenue", "coverage"}
    for method in doc["methods"].values():
        for level in (method, method["triple"]):
            assert keys <= set(level)
            assert keys <= set(level["ci95"])
            for key in keys:
                lo, hi = level["ci95"][key]
                assert lo <= level[key] + 1e-12 and level[key] <= hi + 1e-12, key
        assert [m["month"] for m in method["monthly"]] == ["2023-11"]
        assert "triple" in method["monthly"][0]
    assert doc["methods"]["cooc_lift"]["params"]["min_support"] == 3
    assert result_table(hand).row_count == 2 * len(METHOD_NAMES)  # 2- and 3-item rows


def data_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return Path(os.environ.get("STREAMER_DATA_DIR", default))


def test_end_to_end_on_the_bakery_log(tmp_path: Path) -> None:
    path = data_dir() / "bakery" / "BreadBasket_DMS.csv"
    if not path.is_file():
        pytest.fail(f"bakery log missing at {path}: set STREAMER_DATA_DIR to the shared data")
    seen: list[tuple[int, int]] = []
    result = run_evaluation(
        path,
        "bakery",
        json_path=tmp_path / "eval.json",
        plot_path=tmp_path / "eval.png",
        progress=lambda done, total: seen.append((done, total)),
        bootstrap=200,
    )
    # PROVENANCE.txt: 5,517 baskets with two or more items, 2016-10 .. 2017-04.
    assert result.orders == 5_517
    assert seen[-1][0] == seen[-1][1] == result.events
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert len(doc["methods"]["streamer"]["monthly"]) == 7
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    streamer, rnd = result.methods["streamer"], result.methods["random"]
    assert streamer.pair.bundle_hit_rate > rnd.pair.ci95["bundle_hit_rate"][1]
    assert streamer.triple.pair_hit_rate > rnd.triple.ci95["pair_hit_rate"][1]
    assert streamer.pair.coverage > 0.9
    for method in result.methods.values():
        for metrics in (method.pair, method.triple):
            lo, hi = metrics.ci95["bundle_hit_rate"]
            assert 0.0 <= lo <= metrics.bundle_hit_rate <= hi <= 1.0
            assert metrics.bundle_hit_rate <= metrics.pair_hit_rate <= metrics.coverage
    frozen = result.methods["frozen_rules"].params
    assert 0 < frozen["min_support"] < 1 and frozen["rules"] > 0
    assert doc["protocol"]["max_order_lines"] is None  # whole orders, not the wire's 200


def test_evaluate_file_reads_whole_orders(tmp_path: Path) -> None:
    # Orders past a line cap are read whole: every item is an anchor (the cap is the wire's).
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    rows = [
        f"{invoice},{code},X,1,2010-12-0{day} 10:00:00,1.0,12345.0,UK\n"
        for invoice, day in (("536001", 1), ("536002", 2), ("536003", 3))
        for code in range(6)
    ]
    path = tmp_path / "retail.csv"
    path.write_text(header + "".join(rows))
    whole = evaluate_file(path, "online-retail", bootstrap=10)
    assert (whole.orders, whole.anchors, whole.max_order_lines) == (3, 18, None)
    cut = evaluate_file(path, "online-retail", bootstrap=10, max_order_lines=4)
    assert (cut.orders, cut.anchors, cut.max_order_lines) == (3, 12, 4)
    # The first order cannot hit; the next two do, for every anchor.
    assert whole.methods["cooc_count"].pair.bundle_hit_rate == pytest.approx(2 / 3)


def test_a_catalogue_beyond_what_a_dense_table_held_is_evaluated_in_bounded_memory() -> None:
    """20,000 distinct items bought, more than the 16,384 the dense int32 co-count table held
    (1 GiB; 1.6 GB at 20,000): evaluated in seconds, the last pair bought again is a hit, and
    the baselines' table grows with the pairs co-bought (traced apart: tracemalloc would triple
    the whole evaluation's time)."""
    import time
    import tracemalloc

    pairs = 10_000
    baskets = [[f"sku{2 * n}", f"sku{2 * n + 1}"] for n in range(pairs)]
    baskets.append(baskets[-1])
    started = time.perf_counter()
    result = evaluate([purchase(n, b) for n, b in enumerate(baskets)], dataset="big", bootstrap=0)
    assert time.perf_counter() - started < 20
    assert (result.orders, result.anchors) == (pairs + 1, 2 * pairs + 2)
    cooc = result.methods["cooc_count"].pair
    assert cooc.bundle_hit_rate == cooc.coverage == pytest.approx(2 / (2 * pairs + 2))

    tracemalloc.start()
    try:
        counts = CoOccurrence()
        for n, b in enumerate(baskets):
            counts.learn(order(n, b))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts.size == 2 * pairs
    assert peak < 16 * 2**20, peak  # about 300 bytes per item


def test_progress_reports_the_total_as_soon_as_the_events_are_read() -> None:
    """Reading a file takes a while (35 s for Online Retail); the progress bar showed ``0/?``
    until the first few thousand events were scored."""
    seen: list[tuple[int, int]] = []
    evaluate([purchase(n, ["tea", "cup"]) for n in range(3)], dataset="toy", bootstrap=10,
             progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 3), (3, 3)]  # and then about once a second, and at the end


def test_captured_revenue_is_never_more_than_the_orders_revenue() -> None:
    """Every anchor of a repeated basket offers the same popular partner: its revenue is
    captured once per order, not once per anchor."""
    basket = ["a", "b", "c"]
    result = evaluate([purchase(n, basket) for n in range(5)], dataset="toy", bootstrap=10)
    paid = sum(PRICES[i] for i in basket) * (result.orders - 1)  # the first: no offer yet
    for method in result.methods.values():
        for metrics in (method.pair, method.triple):
            assert metrics.captured_revenue <= paid + 1e-9, method.name
    assert result.methods["cooc_count"].triple.captured_revenue == pytest.approx(paid)
    assert result.priced


def test_data_without_prices_is_marked_so() -> None:
    unpriced = [PurchaseEvent(event_id=f"e{n}", ts=T0 + n, user_id="u", session_id="s",
                              order_id=f"o{n}", items=[OrderLine(item_id=i, quantity=1,
                                                                 unit_price=1.0)
                                                       for i in ("a", "b")])
                for n in range(3)]
    result = evaluate(unpriced, dataset="toy", bootstrap=10)
    assert not result.priced and result.to_dict()["priced"] is False


def rendered(result: EvaluationResult, width: int = 80) -> str:
    """The table as rich prints it to a pipe or a CI log (80 columns: not a terminal)."""
    from rich.console import Console

    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(result_table(result))
    return console.export_text()


def test_the_table_at_80_columns_keeps_method_names_whole(hand: EvaluationResult) -> None:
    """Nothing cut at 80 columns: names (cut, cooc_count and cooc_lift both read "cooc_…"),
    headers, intervals."""
    text = rendered(hand)
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in hand.methods:
        assert any(line.split()[:2] == [name, "2-item"] for line in text.splitlines()), name
    assert "…" not in text and "[0.000, 0.667]" in text
    # A 2-item bundle's one partner makes its pair hit its bundle hit: said, not repeated.
    assert all(m.pair.pair_hit_rate == m.pair.bundle_hit_rate for m in hand.methods.values())
    assert text.count("= bundle hit") == len(hand.methods)


def test_without_prices_or_bootstrap_the_table_says_so_rather_than_print_a_figure() -> None:
    unpriced = [purchase(n, ["x", "y"]) for n in range(3)]  # unit price 1.0: none
    result = evaluate(unpriced, dataset="toy", bootstrap=0)
    lines = rendered(result).splitlines()
    text = " ".join(" ".join(lines).split())
    assert "n/a" in text and "hit revenue n/a: the data has no prices" in text
    # No interval, rather than [0.000, 0.000] under a rate of 0.667.
    assert "[0.000, 0.000]" not in text and ["-", "-"] in [line.split() for line in lines]
    assert "no intervals (--bootstrap 0)" in text
    assert result.to_dict()["methods"]["cooc_count"]["ci95"]["bundle_hit_rate"] is None


def test_the_plots_rate_axis_starts_at_zero(hand: EvaluationResult) -> None:
    from streamer.replay.report import hit_rate_figure

    # Autoscaling put a margin below the lowest band: Taobao's axis went negative.
    assert [ax.get_ylim()[0] for ax in hit_rate_figure(hand).axes] == [0.0, 0.0]
