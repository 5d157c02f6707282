"""The live wiring of rewards without Kafka: partitions own their keys, ticks close idle
partitions, outcomes count once, the board's guardrails, the dashboard data and the report."""

from __future__ import annotations

import asyncio
from typing import Any

from streamer.app.dashboard import dashboard_data
from streamer.app.offer_index import OfferIndex
from streamer.app.report import render_report
from streamer.app.reward_board import RewardBoard
from streamer.app.reward_tracking import RewardConfig, RewardTracker
from streamer.events import BundleOffer, ClickEvent, Evidence, RewardWindow, Variant
from streamer.observability import Metrics
from streamer.rewards import WindowSpec

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


def window(version: str, start: int, n: int, rate: float) -> RewardWindow:
    return RewardWindow(window_start=start, window_end=start + 60_000, policy_version=version,
                        impressions=n, offer_clicks=0, conversions=n // 20, revenue=rate * n,
                        reward_rate=rate, ci95=[rate * 0.8, rate * 1.2])


def test_board_alarms_on_a_sample_ratio_mismatch_only_when_versions_share_traffic() -> None:
    board = RewardBoard(min_impressions=100, min_conversions=1)
    board.add(window("v1", T, 5_000, 1.0))
    assert board.guardrails().srm is None
    board.add(window("v2", T, 4_000, 1.0))  # 5,000 vs 4,000 against an equal split
    g = board.guardrails()
    assert g.srm is not None and g.srm_alarm and g.srm.p_value < 1e-6
    split = RewardBoard(min_impressions=100, expected_split={"v1": 5, "v2": 4})
    split.add_all([window("v1", T, 5_000, 1.0), window("v2", T, 4_000, 1.0)])
    assert not split.guardrails().srm_alarm


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
