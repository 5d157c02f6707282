"""The live wiring of rewards without Kafka: partitions own their keys, ticks close idle
partitions, outcomes count once, the board's guardrails, the dashboard data and the report."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from streamer.app.dashboard import DASHBOARD_HTML, dashboard_data
from streamer.app.offer_index import OfferIndex
from streamer.app.report import render_report, reward_figure
from streamer.app.reward_board import Guardrails, RewardBoard
from streamer.app.reward_tracking import RewardConfig, RewardTracker
from streamer.events import BundleOffer, ClickEvent, Evidence, RewardWindow, Variant
from streamer.observability import Metrics
from streamer.rewards import DEFAULT_SPECS, ImpressionOutcome, RewardLedger, WindowSpec

T = 1_700_000_040_000


def make_offer(offer_id: str, version: str) -> BundleOffer:
    v = Variant(items=["a", "b"], discount_pct=10.0, bundle_price=27.0, probability=1.0,
                score=1.0, evidence=Evidence(support=1.0, confidence=1.0, lift=1.0))
    return BundleOffer(offer_id=offer_id, ts=T, anchor_item_id="a", segment="all",
                       policy_version=version, variants=[v], expires_at=T + 3_600_000)


def imp(eid: str, session: str, ts: int = T) -> ClickEvent:
    return ClickEvent(event_id=eid, ts=ts, user_id="u", session_id=session, item_id="a",
                      kind="offer_impression", offer_id="o1", variant=0, propensity=1.0)


def tracker() -> tuple[RewardTracker, tuple[dict[str, Any], ...]]:
    tables: tuple[dict[str, Any], ...] = ({}, {}, {}, {})
    config = RewardConfig(window_ms=1_000, allowed_lateness_ms=0,
                          specs=(WindowSpec(10_000, 10_000),), ledger_lateness_ms=0)
    return RewardTracker(*tables, offers={"o1": make_offer("o1", "v1")}, config=config,
                         metrics=Metrics()), tables


def test_each_partition_writes_only_its_own_keys_and_has_its_own_clock() -> None:
    t, (sessions, _, clocks, _) = tracker()
    t.observe(imp("i1", "s1"), partition=0, wall_ms=0)
    t.observe(imp("i2", "s2", ts=T + 5_000), partition=1, wall_ms=0)
    assert sorted(sessions) == ["0|s1", "1|s2"]
    assert sorted(clocks) == ["attribution:0|max_event_ts", "attribution:1|max_event_ts"]
    # Partition 1's later events do not close partition 0's impression...
    assert t.tick(0, wall_ms=0) == ([], [])
    # ...idle wall time does.
    outcomes, _ = t.tick(0, wall_ms=1_000)
    assert [o.impression_id for o in outcomes] == ["i1"]
    assert sorted(sessions) == ["1|s2"]


def test_a_redelivered_outcome_counts_once_and_windows_expire() -> None:
    t, (_, windows, _, seen) = tracker()
    t.observe(imp("i1", "s1"), partition=0, wall_ms=0)
    (outcome,), _ = t.tick(0, wall_ms=1_000)
    assert t.record(outcome, partition=3, wall_ms=1_000) == []
    assert t.record(outcome, partition=3, wall_ms=1_000) == []
    assert len(windows) == 1 and sorted(seen) == ["i1"]
    _, closed = t.tick(3, wall_ms=20_000)
    assert [(w.policy_version, w.impressions) for w in closed] == [("v1", 1)]
    assert t.open_state() == (0, 0)
    assert t.metrics.reward_impressions.labels("v1")._value.get() == 1


@pytest.mark.parametrize("landed", [{0, 1}, {0, 1, 3}, {3}, set()])
def test_an_outcome_read_again_after_a_crash_counts_once_whatever_part_of_its_state_landed(
    landed: set[int],
) -> None:
    """The worker died mid write-back, its outcome's offset uncommitted: some of the tables'
    changelog records had reached the broker (``landed``: indexes of the tracker's tables,
    1 the windows, 3 the ids seen), the others not. The outcome read again counts once."""
    t, tables = tracker()
    for i in range(2):
        t.observe(imp(f"i{i}", f"s{i}"), partition=0, wall_ms=0)
    first, second = t.tick(0, wall_ms=1_000)[0]
    t.record(first, partition=3, wall_ms=1_000, offset=10)  # committed
    before = [copy.deepcopy(table) for table in tables]
    t.record(second, partition=3, wall_ms=1_000, offset=11)  # flushed, not committed
    recovered = [copy.deepcopy(tables[i] if i in landed else before[i]) for i in range(4)]
    again = RewardTracker(*recovered, offers={"o1": make_offer("o1", "v1")}, config=t.config,
                          metrics=Metrics())
    assert again.record(second, partition=3, wall_ms=1_000, offset=11) == []
    _, closed = again.tick(3, wall_ms=20_000)
    assert [(w.policy_version, w.impressions) for w in closed] == [("v1", 2)]


def test_a_negative_reward_is_counted_as_a_loss_not_clipped() -> None:
    """Margin rewards go negative when a discount costs more than the margin: /metrics must
    let the mean reward be computed, (sum - loss) / impressions, not clip losses to 0."""
    t, _ = tracker()
    t.observe(imp("i1", "s1"), partition=0, wall_ms=0)
    (outcome,), _ = t.tick(0, wall_ms=1_000)
    t.record(msgspec.structs.replace(outcome, impression_id="a", reward=3.0), partition=3,
             wall_ms=1_000)
    t.record(msgspec.structs.replace(outcome, impression_id="b", reward=-2.0), partition=3,
             wall_ms=1_000)
    m = t.metrics
    assert m.reward_sum.labels("v1")._value.get() == 3.0
    assert m.reward_loss.labels("v1")._value.get() == 2.0


def test_an_event_from_the_far_future_is_counted_too_early_and_moves_no_clock() -> None:
    from streamer.events.models import TS_MAX_MS

    t, (_, _, clocks, _) = tracker()
    wall = T + 1_000
    t.observe(imp("i1", "s1"), partition=0, wall_ms=wall)
    bogus = ClickEvent(event_id="x", ts=TS_MAX_MS - 1, user_id="bot", session_id="bot",
                       item_id="a", kind="view")
    assert t.observe(bogus, partition=0, wall_ms=wall) == []
    assert t.metrics.attribution_events.labels("too_early")._value.get() == 1
    assert clocks["attribution:0|max_event_ts"] == T
    # Neither does the next tick move event time there: it moves at wall speed, as before.
    assert t.tick(0, wall_ms=wall + 500) == ([], [])
    assert clocks["attribution:0|max_event_ts"] == T + 500


def test_a_stale_tick_after_a_restart_does_not_pass_the_downtime_as_idle_time() -> None:
    from streamer.events import OrderLine, PurchaseEvent

    config = RewardConfig(window_ms=60_000, allowed_lateness_ms=0,
                          specs=(WindowSpec(10_000, 10_000),), ledger_lateness_ms=0)
    offers = {"o1": make_offer("o1", "v1")}
    crash, down = T + 1_000, 40 * 60_000

    def restarted() -> tuple[RewardTracker, dict[str, Any]]:
        tables: tuple[dict[str, Any], ...] = ({}, {}, {}, {})
        first = RewardTracker(*tables, offers=offers, config=config, metrics=Metrics())
        first.observe(imp("i1", "s1"), partition=0, wall_ms=crash)
        return RewardTracker(*tables, offers=offers, config=config, metrics=Metrics()), tables[2]

    t, _ = restarted()
    back = crash + down
    # The first message after the restart: a tick sent just before the crash, redelivered.
    assert t.tick(0, wall_ms=crash - 500, now_ms=back) == ([], [])
    # The timer's next tick, a second later: a second of idle time, not forty minutes.
    assert t.tick(0, wall_ms=back + 1_000, now_ms=back + 1_000) == ([], [])
    # So the backlog's purchase, made during the downtime, still reaches its impression...
    purchase = PurchaseEvent(event_id="p1", ts=T + 30_000, user_id="u", session_id="s1",
                             order_id="r1", offer_id="o1",
                             items=[OrderLine(item_id="a", quantity=1, unit_price=18.0),
                                    OrderLine(item_id="b", quantity=1, unit_price=9.0)])
    assert t.observe(purchase, partition=0, wall_ms=back + 1_100) == []
    # ...and ticks still close an idle partition's impressions as wall time passes.
    outcomes, _ = t.tick(0, wall_ms=back + 61_000, now_ms=back + 61_000)
    assert [(o.impression_id, o.converted) for o in outcomes] == [("i1", True)]
    # A tick stamped ahead of this process's clock moves event time no further than it.
    t, clocks = restarted()
    assert t.tick(0, wall_ms=back + 600_000, now_ms=back) == ([], [])
    assert clocks["attribution:0|max_event_ts"] == T


def test_a_partitions_event_time_moves_with_idle_ticks_and_resumes_after_a_restart() -> None:
    # What the price sweep revises offers at (streamer.app.price_sweep).
    t, tables = tracker()
    assert t.event_time(0, wall_ms=0, now_ms=0) is None  # nothing seen yet
    t.observe(imp("i1", "s1"), partition=0, wall_ms=100)
    assert t.event_time(0, wall_ms=100, now_ms=100) == T
    assert t.event_time(0, wall_ms=60_100, now_ms=60_100) == T + 60_000  # a minute idle
    assert t.event_time(0, wall_ms=90_100, now_ms=60_100) == T + 60_000  # stamp capped
    assert t.event_time(1, wall_ms=60_100, now_ms=60_100) is None  # its own clock
    restarted = RewardTracker(*tables, offers={}, config=t.config, metrics=Metrics())
    assert restarted.event_time(0, wall_ms=50, now_ms=999_000) == T  # no downtime counted


def window(version: str, start: int, n: int, rate: float) -> RewardWindow:
    return RewardWindow(window_start=start, window_end=start + 60_000, policy_version=version,
                        impressions=n, offer_clicks=0, conversions=n // 20, revenue=rate * n,
                        reward_rate=rate, ci95=[rate * 0.8, rate * 1.2])


def test_board_alarms_on_a_sample_ratio_mismatch_only_when_versions_share_traffic() -> None:
    board = RewardBoard(min_impressions=100, min_conversions=1,
                        expected_split={"v1": 1, "v2": 1})
    board.add_all(window("v1", T + k * 60_000, 5_000, 1.0) for k in range(2))
    assert board.guardrails().srm is None and board.guardrails().srm_status == "not tested"
    # 5,000 vs 4,000 a minute against an equal split
    board.add_all(window("v2", T + k * 60_000, 4_000, 1.0) for k in range(2))
    g = board.guardrails()
    assert g.srm is not None and g.srm_alarm and g.srm.p_value < 1e-6
    assert g.srm_status == "ALARM"
    split = RewardBoard(min_impressions=100, expected_split={"v1": 5, "v2": 4})
    split.add_all(window(v, T + k * 60_000, n, 1.0)
                  for k in range(2) for v, n in (("v1", 5_000), ("v2", 4_000)))
    assert not split.guardrails().srm_alarm


def test_board_srm_tests_only_while_versions_serve_side_by_side() -> None:
    board = RewardBoard(min_impressions=100, min_conversions=1,
                        expected_split={"v1": 1, "v2": 1})
    board.add_all(window(v, T + k * 60_000, n, 1.0)
                  for k in range(3) for v, n in (("v1", 5_000), ("v2", 4_000)))
    assert board.guardrails().srm_alarm
    # v2's next window is in, v1's not yet (another worker's ledger): still side by side.
    board.add(window("v2", T + 180_000, 4_000, 1.0))
    side = board.side_by_side()
    assert side is not None and side.starts[-1] == T + 120_000 and board.guardrails().srm_alarm
    board.add(window("v1", T + 180_000, 4_000, 1.0))
    g = board.guardrails()
    assert g.srm is not None and g.srm.observed == {"v1": 4_000, "v2": 4_000}
    assert not g.srm_alarm
    # v1 stops; once v2 has served alone for two windows, there is nothing to compare.
    board.add_all([window("v2", T + k * 60_000, 5_000, 1.0) for k in (4, 5)])
    assert board.side_by_side() is None and board.guardrails().srm is None


def test_board_live_version_is_the_one_with_the_newest_windows_after_a_rollback() -> None:
    board = RewardBoard(min_impressions=1_000, min_conversions=20)
    board.add_all(window("v1", T + k * 60_000, 5_000, 1.0) for k in range(3))
    board.add_all(window("v2", T + k * 60_000, 5_000, 0.2) for k in range(3, 6))
    assert board.versions() == ["v1", "v2"] and board.guardrails().regression_alarm
    board.add_all(window("v1", T + k * 60_000, 5_000, 1.0) for k in range(6, 9))  # rolled back
    assert board.versions() == ["v2", "v1"]
    g = board.guardrails()
    assert g.regression is not None and g.regression.live_version == "v1"
    assert not g.regression_alarm


def test_board_regression_compares_with_the_previous_versions_last_window_with_enough_data(
) -> None:
    board = RewardBoard(min_impressions=1_000, min_conversions=20)
    # v1's last window is the thin tail of the span v2 took over in.
    board.add_all([window("v1", T, 5_000, 2.0), window("v1", T + 60_000, 5_000, 2.0),
                   window("v1", T + 120_000, 200, 2.0), window("v2", T + 120_000, 4_800, 0.5),
                   window("v2", T + 180_000, 5_000, 0.5)])
    g = board.guardrails()
    assert g.regression is not None and g.regression.previous_impressions == 5_000
    assert g.regression_alarm


def outcome(ts: int, version: str, reward: float = 0.0) -> ImpressionOutcome:
    return ImpressionOutcome(
        impression_id=f"i{ts}", ts=ts, session_id="s", user_id="u", offer_id="o", variant=0,
        propensity=1.0, policy_version=version, anchor_item_id="a", segment="all",
        items=("a", "b"), discount_pct=10.0, clicked=reward > 0, converted=reward > 0,
        revenue=reward, reward=reward, purchase_ids=(), attributed_at=ts, late=False)


def test_board_guardrails_through_a_promotion_and_a_rollback_on_ledger_output() -> None:
    """A sequential switch v1 -> v2 -> v1 as the ledger reports it, hourly-style windows
    (10 min every minute) besides tumbling minutes: the regression alarm rings while the bad
    v2 is live and not after the rollback; the SRM alarm of the straddling spans clears."""
    import random

    rng = random.Random(1)
    minute = 60_000
    promote, rollback, end = T + 10 * minute + 30_000, T + 40 * minute, T + 70 * minute
    ledger = RewardLedger({}, specs=(WindowSpec(minute, minute), WindowSpec(10 * minute, minute)),
                          allowed_lateness_ms=0)
    board = RewardBoard(min_impressions=200, min_conversions=5)
    alarm_while_v2_live = False
    for ts in range(T, end, 1_000):
        version = "v2" if promote <= ts < rollback else "v1"
        reward = 30.0 if rng.random() < (0.3 if version == "v1" else 0.05) else 0.0
        ledger.add(outcome(ts, version, reward))
        board.add_all(ledger.advance())
        if promote + 12 * minute <= ts < rollback:
            assert board.versions()[-1] == "v2"
            alarm_while_v2_live |= board.guardrails().regression_alarm
        if ts == rollback - 1_000:
            assert board.guardrails().srm is None
    assert alarm_while_v2_live
    g = board.guardrails()
    assert board.versions()[-1] == "v1"
    assert not g.regression_alarm and g.srm is None


def guardrails_by_minute(serve: Callable[[int], str], minutes: int,
                         **board: Any) -> list[Guardrails]:
    """The board's guardrails after each minute of traffic, one impression a second, as the
    ledger reports it in the default windows (1m tumbling, 1h every 5 min); ``serve(n)``
    names the version that served the ``n``-th impression."""
    ledger = RewardLedger({}, specs=DEFAULT_SPECS, allowed_lateness_ms=0)
    reward_board = RewardBoard(**board)
    seen = []
    for m in range(minutes):
        for n in range(60 * m, 60 * (m + 1)):
            ledger.add(outcome(T + n * 1_000, serve(n)))
        reward_board.add_all(ledger.advance())
        seen.append(reward_board.guardrails())
    return seen


def test_board_srm_does_not_alarm_after_a_promotion_or_a_rollback() -> None:
    """v1 -> v2 -> v1, each switch mid-minute: the hourly windows hold both versions for an
    hour after each (unevenly: an SRM against equal shares), the 1-minute windows one minute
    only. A switch is not a split: SRM is never tested, even with an even split of the two
    configured."""
    promote, rollback = 70 * 60 + 30, 160 * 60 + 30

    def serve(n: int) -> str:
        return "v2" if promote <= n < rollback else "v1"

    seen = guardrails_by_minute(serve, 240, expected_split={"v1": 1, "v2": 1})
    assert [m for m, g in enumerate(seen) if g.srm is not None] == []


def test_board_srm_alarms_on_a_real_split_with_a_mismatch() -> None:
    """v1 and v2 side by side from the start, 3:2 against an equal split: the alarm rings
    once a few minutes hold enough impressions, and stays on; against a 3:2 split it never
    rings."""
    def serve(n: int) -> str:
        return "v1" if n % 5 < 3 else "v2"

    seen = guardrails_by_minute(serve, 90, expected_split={"v1": 1, "v2": 1})
    assert all(g.srm_alarm for g in seen[10:])
    assert seen[-1].srm is not None and seen[-1].srm.observed == {"v1": 2_160, "v2": 1_440}
    fair = guardrails_by_minute(serve, 90, expected_split={"v1": 3, "v2": 2})
    assert all(g.srm is not None and not g.srm_alarm for g in fair[3:])


def test_board_srm_does_not_count_the_time_before_a_canary_started() -> None:
    """A 1-in-10 canary of v2 starts beside v1, as srm_expected_split says: for an hour the
    hourly windows hold v1 alone before it started, and a tenth is not v2's share of them."""
    start = 70 * 60 + 30

    def serve(n: int) -> str:
        return "v2" if n >= start and n % 10 == 0 else "v1"

    seen = guardrails_by_minute(serve, 150, expected_split={"v1": 9, "v2": 1})
    assert not any(g.srm_alarm for g in seen)
    assert all(g.srm is not None for g in seen[73:])


def test_board_srm_alarms_on_a_worker_left_on_an_old_version_of_a_designed_split() -> None:
    """An even A/B split of v1 and v2; v2 is replaced by v3, and one worker of five misses
    it and keeps serving v2: the three versions have impressions in every minute, v2 with no
    share of the split. The alarm rings within three minutes and does not stop."""
    promote = 70 * 60 + 30

    def serve(n: int) -> str:
        if n % 2 == 0:
            return "v1"
        return "v2" if n < promote or n % 5 == 1 else "v3"

    seen = guardrails_by_minute(serve, 200, expected_split={"v1": 1, "v3": 1})
    assert all(g.srm_alarm for g in seen[73:])
    assert seen[-1].srm is not None and set(seen[-1].srm.observed) == {"v1", "v2", "v3"}


def test_board_srm_is_not_tested_without_a_designed_split() -> None:
    """A promotion's tail: after v2 is promoted the storefront keeps showing v1's offers of
    the anchors not revised since, a share that shrinks over hours. Both versions serve in
    every minute, in no designed proportion: without srm_expected_split nothing is tested
    (equal shares, assumed, alarm on every such tail: shown with them configured)."""
    promote = 70 * 60 + 30

    def serve(n: int) -> str:
        if n < promote:
            return "v1"
        tail = 0.4 * 0.5 ** ((n - promote) / 1_800)  # v1's share halves every half hour
        return "v1" if (n * 0.618034) % 1.0 < tail else "v2"

    seen = guardrails_by_minute(serve, 200)
    assert all(g.srm is None and g.srm_status == "not tested" for g in seen)
    assumed = guardrails_by_minute(serve, 200, expected_split={"v1": 1, "v2": 1})
    assert all(g.srm_alarm for g in assumed[75:])


def test_board_srm_compares_only_the_versions_serving_side_by_side() -> None:
    """v1 is replaced by an even A/B split of v2 and v3: the hourly windows still hold v1's
    tail for an hour, but only v2 and v3 serve, evenly; v1 is no share of their split."""
    start = 70 * 60 + 30

    def serve(n: int) -> str:
        return "v1" if n < start else ("v2", "v3")[n % 2]

    seen = guardrails_by_minute(serve, 150, expected_split={"v2": 1, "v3": 1})
    assert not any(g.srm_alarm for g in seen)
    assert all(g.srm is not None and set(g.srm.observed) == {"v2", "v3"} for g in seen[73:])


def test_dashboard_data_and_report_show_the_windows() -> None:
    board = RewardBoard()
    ws = [window("v1", T + k * 60_000, 100, 1.0 + k) for k in range(3)]
    board.add_all(ws)
    index = OfferIndex(retention_ms=0)
    index.add(make_offer("o1", "v1"))
    data = dashboard_data(board, index, {"streamer_consumer_lag": {"clicks": 3.0}})
    assert data["window"] == "1m"
    assert [p["reward_rate"] for p in data["series"][0]["points"]] == [1.0, 2.0, 3.0]
    assert data["offers"][0]["offer_id"] == "o1" and data["lag"] == {"clicks": 3.0}
    page = render_report(ws)
    assert page.count("data:image/png;base64,") == 1 and "<td>v1</td><td>3</td>" in page


def test_the_report_draws_version_names_as_text_not_mathtext() -> None:
    # matplotlib read a name with "$" as mathtext: an unbalanced one failed the whole report.
    import matplotlib

    odd = ["$\\frac{$", "a$x^2$b", "v1"]
    page = render_report([window(v, T + k * 60_000, 100, 1.0) for k, v in enumerate(odd)])
    assert page.count("data:image/png;base64,") == 1
    assert matplotlib.rcParams["text.parse_math"]  # only the report's figures, not the process


def test_the_report_shows_a_version_whose_name_starts_with_an_underscore_in_its_legend(
        ) -> None:
    # matplotlib leaves an artist labelled "_..." out of a legend it assembles itself.
    board = RewardBoard()
    board.add_all(window(v, T + k * 60_000, 100, 1.0) for k, v in enumerate(["_canary", "v1"]))
    fig = reward_figure(60_000, board.series(60_000))
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["_canary", "v1"]


def test_the_dashboard_shows_version_names_as_text_not_html() -> None:
    # A version name reached drawGuardrails' innerHTML unescaped: an <img onerror> named
    # version ran script on the page (the guardrails line printed the tag itself).
    evil = "<img src=x onerror=alert(1)>"
    board = RewardBoard(min_impressions=1, min_conversions=0)
    board.add_all([window("v1", T, 500, 2.0), window(evil, T + 60_000, 500, 1.0)])
    data = dashboard_data(board, OfferIndex(retention_ms=0), {})
    assert data["guardrails"]["regression"]["live_version"] == evil
    script = DASHBOARD_HTML.split("<script>")[1].split("</script>")[0]
    assert ".innerHTML" not in script and "insertAdjacentHTML" not in script
    if shutil.which("node") is None:
        return
    start = script.index("function status(")
    functions = script[start:script.index("async function refresh()")]
    js = functions + """
class Node { constructor(tag, text) { this.tag = tag; this.textContent = text ?? "";
  this.children = []; } replaceChildren(...c) { this.children = c; } }
const div = new Node("div");
globalThis.document = {getElementById: () => div, createElement: t => new Node(t),
  createTextNode: t => new Node("#text", t)};
function fmt(x) { return String(x); }
drawGuardrails(""" + json.dumps(data["guardrails"]) + """);
console.log(JSON.stringify(div.children.map(c => [c.tag, c.id ?? null, c.textContent])));
"""
    out = subprocess.run(["node", "-e", js], capture_output=True, text=True, check=True)
    nodes = json.loads(out.stdout)
    assert [tag for tag, _, _ in nodes] == ["span", "#text", "br", "span", "#text"]
    assert nodes[3][1] == "regression" and evil in nodes[4][2]  # as text


def test_the_offer_feed_refuses_counts_and_logs_once_offers_stamped_far_ahead(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # The index's clock is the newest offer's ts: one offer stamped in 2099 evicted every
    # offer indexed, and every later real one as soon as it was added (no attribution).
    import time

    from aiokafka import TopicPartition

    from streamer.app import offer_index
    from streamer.events import EventCodec
    from streamer.settings import KafkaSettings

    now = int(time.time() * 1000)

    def offer(oid: str, ts: int) -> bytes:
        made = msgspec.structs.replace(make_offer(oid, "v1"), ts=ts, expires_at=ts + 86_400_000)
        return EventCodec().encode(made)

    sent = [offer("live-1", now), offer("from-2099", 4_070_000_000_000),
            offer("live-2", now + 1_000), offer("also-2099", 4_070_000_000_000),
            offer("in-the-hour", now + 3_000_000)]
    tp = TopicPartition("offers", 0)

    class Consumer:  # one fetch of ``sent``, then the feed is cancelled
        def __init__(self, **_: Any) -> None:
            self.fetches = 0

        async def start(self) -> None: ...
        async def stop(self) -> None: ...

        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0}

        def assign(self, tps: list[TopicPartition]) -> None: ...

        async def offsets_for_times(self, times: dict[TopicPartition, int]) -> dict[Any, Any]:
            return {tp: SimpleNamespace(offset=0)}

        def seek(self, tp: TopicPartition, offset: int) -> None: ...

        async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
            self.fetches += 1
            if self.fetches > 1:
                raise asyncio.CancelledError
            return {tp: [SimpleNamespace(topic="offers", partition=0, offset=n, value=v)
                         for n, v in enumerate(sent)]}

        def highwater(self, tp: TopicPartition) -> int:
            return len(sent)

        async def position(self, tp: TopicPartition) -> int:
            return len(sent)

    monkeypatch.setattr(offer_index, "AIOKafkaConsumer", Consumer)
    index = OfferIndex(retention_ms=2 * 3_600_000)
    feed = offer_index.OfferIndexFeed(KafkaSettings(), "offers", index, lookback_ms=0,
                                      max_ahead_ms=3_600_000)
    with caplog.at_level("WARNING", logger="streamer.app.offer_index"), \
            pytest.raises(asyncio.CancelledError):
        asyncio.run(feed.run())
    assert [o for o in ("live-1", "live-2", "in-the-hour") if index.get(o) is None] == []
    assert index.get("from-2099") is None and index.clock_ms == now + 3_000_000
    assert (feed.ahead, feed.invalid, feed.caught_up.is_set()) == (2, 0, True)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "offer refused at offers[0]@1" in warnings[0], warnings
    assert "ahead of the reader's clock" in warnings[0]


def test_the_offer_feed_is_caught_up_once_every_partition_reached_its_high_watermark() -> None:
    from aiokafka import TopicPartition

    from streamer.app.offer_index import _read_to_highwaters

    class Consumer:
        def __init__(self, highwaters: dict[int, int | None], positions: dict[int, int]) -> None:
            self.highwaters, self.positions = highwaters, positions

        def highwater(self, tp: TopicPartition) -> int | None:
            return self.highwaters[tp.partition]

        async def position(self, tp: TopicPartition) -> int:
            return self.positions[tp.partition]

    tps = [TopicPartition("offers", p) for p in range(2)]

    def caught_up(highwaters: dict[int, int | None], positions: dict[int, int]) -> bool:
        consumer: Any = Consumer(highwaters, positions)
        return asyncio.run(_read_to_highwaters(consumer, tps))

    assert caught_up({0: 5, 1: 0}, {0: 5, 1: 0})
    assert not caught_up({0: 5, 1: 3}, {0: 5, 1: 2})  # partition 1 still behind
    assert not caught_up({0: 5, 1: None}, {0: 5, 1: 0})  # partition 1 never fetched yet
