"""The engine's state survives a crash at *any* point of its changelog: recovered from any
prefix of its table writes and sent every event again (at-least-once: the same messages, at
the same offsets), it ends in the state of a run that never stopped. This is the mechanism
behind ``ItemRecord``: the offsets learned and the counts they guard are one write, so no
prefix holds one without the other; and the event-id memory lets the very message it saw
through again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from streamer.copurchase import TOTAL_KEY
from streamer.engine import Engine, EngineConfig, EngineState, ItemRecord
from streamer.events import OrderLine, PurchaseEvent

T0 = 1_700_000_000_000
Log = list[tuple[str, str, Any]]


class ChangelogTable(MutableMapping[str, Any]):
    """A dict that appends every write to a shared log, as a faust table sends a changelog
    message per assignment (a delete is logged with value None)."""

    def __init__(self, name: str, log: Log, data: dict[str, Any] | None = None) -> None:
        self.name, self.log, self.data = name, log, dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.log.append((self.name, key, value))

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.log.append((self.name, key, None))

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


TABLES = ("items", "counts", "catalog", "offers", "seen")


def engine_on(log: Log, recovered: Log = ()) -> Engine:  # type: ignore[assignment]
    """An engine whose tables log to ``log``, recovered from the changelog ``recovered``."""
    data: dict[str, dict[str, Any]] = {name: {} for name in TABLES}
    for name, key, value in recovered:
        if value is None:
            data[name].pop(key, None)
        else:
            data[name][key] = value
    state = EngineState(**{name: ChangelogTable(name, log, data[name]) for name in TABLES})
    config = EngineConfig(min_support=1.0, min_interval_ms=0)
    return Engine(config, state, Engine.v0_policy(config))


def orders(n: int) -> list[PurchaseEvent]:
    menu = [["tea", "cup", "milk"], ["tea", "scone"], ["cup", "saucer", "tea"], ["jam", "scone"]]
    return [PurchaseEvent(event_id=f"e{k}", ts=T0 + k * 1000, user_id="u", session_id=f"s{k}",
                          order_id=f"o{k}",
                          items=[OrderLine(item_id=i, quantity=1, unit_price=2.0)
                                 for i in menu[k % len(menu)]])
            for k in range(n)]


def snapshot(engine: Engine) -> dict[str, Any]:
    s = engine.state
    return {"items": dict(s.items), "counts": dict(s.counts), "catalog": dict(s.catalog)}


def test_recovery_from_any_changelog_prefix_then_redelivery_matches_an_uninterrupted_run(
) -> None:
    events = orders(24)
    log: Log = []
    uninterrupted = engine_on(log)
    for offset, e in enumerate(events):
        uninterrupted.handle_purchase(e, offset=offset)
    expected = snapshot(uninterrupted)
    assert expected["items"][TOTAL_KEY].count.value > 0
    for cut in range(len(log) + 1):  # the worker dies after `cut` changelog messages
        recovered = engine_on([], log[:cut])
        for offset, e in enumerate(events):  # nothing was committed: all delivered again
            recovered.handle_purchase(e, offset=offset)
        assert snapshot(recovered) == expected, f"crash after {cut} of {len(log)} writes"


def test_a_duplicate_sent_after_a_crash_still_counts_once() -> None:
    """The same event id at a later offset (the storefront sent it twice) is dropped whether
    or not the first copy's effects survived the crash."""
    events = orders(8)
    log: Log = []
    uninterrupted = engine_on(log)
    for offset, e in enumerate(events):
        uninterrupted.handle_purchase(e, offset=offset)
    expected = snapshot(uninterrupted)
    for cut in range(len(log) + 1):
        recovered = engine_on([], log[:cut])
        for offset, e in enumerate(events + events[:3]):  # redelivered, then 3 sent again
            recovered.handle_purchase(e, offset=offset)
        assert snapshot(recovered) == expected, f"crash after {cut} of {len(log)} writes"


def test_a_duplicate_repairs_a_lost_count_mirror() -> None:
    engine = engine_on([])
    (event,) = orders(1)
    engine.handle_purchase(event, offset=0)
    mirrored = engine.state.counts["tea"]
    del engine.state.counts["tea"]  # the record's write landed, the mirror's did not
    assert engine.handle_purchase(event, offset=0) == []  # redelivered
    assert engine.state.counts["tea"] == mirrored == engine.state.items["tea"].count


def test_each_event_counts_once_per_anchor_and_the_marks_stay_bounded() -> None:
    config = EngineConfig(min_support=1.0, min_interval_ms=0)
    engine = Engine(config, EngineState.in_memory(), Engine.v0_policy(config))
    events = orders(12)
    for n, e in enumerate(events):
        engine.handle_purchase(e, partition=n % 3, offset=n)
    for n, e in list(enumerate(events))[-3:]:  # the last 3 redelivered
        assert engine.handle_purchase(e, partition=n % 3, offset=n) == []
    record: ItemRecord = engine.state.items["tea"]
    assert record.stats is not None and record.stats.landmark_ms == T0
    # One mark per purchases partition, the last offset of each that had tea in it.
    tea = [(n % 3, n) for n, e in enumerate(events) if any(i.item_id == "tea" for i in e.items)]
    assert record.sources == {p: max(o for q, o in tea if q == p) for p, _ in tea}
    assert engine.has_learned(engine.fan_out(events[-1], source=2, offset=11)[0])
    assert not engine.has_learned(engine.fan_out(events[-1], source=2, offset=12)[0])
    # Counts are forward-decayed from the first event: compare at the landmark's scale.
    assert record.count.value == pytest.approx(
        sum(2 ** ((e.ts - T0) / (config.half_life_s * 1000)) for e in events
            if any(i.item_id == "tea" for i in e.items)), rel=1e-12)


def test_the_reward_ledger_counts_each_outcome_once_whatever_part_of_its_writes_landed() -> None:
    """The ledger's windows and its seen impression ids are two tables, two changelogs: a
    crash may leave any prefix of either's writes. Every outcome is then delivered again (at
    the same offsets) and each is counted once, as in a run that never stopped."""
    from streamer.app.reward_tracking import RewardConfig, RewardTracker
    from streamer.rewards import ImpressionOutcome, WindowSpec

    config = RewardConfig(window_ms=1_000, allowed_lateness_ms=0,
                          specs=(WindowSpec(60_000, 60_000), WindowSpec(120_000, 60_000)),
                          ledger_lateness_ms=600_000)
    outcomes = [ImpressionOutcome(
        impression_id=f"i{k}", ts=T0 + k * 7_000, session_id="s", user_id="u", offer_id="o",
        variant=0, propensity=0.5, policy_version=f"v{k % 2}", anchor_item_id="a",
        segment="all", items=("a", "b"), discount_pct=10.0, clicked=True, converted=k % 3 == 0,
        revenue=float(k), reward=float(k), purchase_ids=(), attributed_at=T0 + k * 7_000,
        late=False) for k in range(6)]

    def tracker(log: Log, windows: Log = (), seen: Log = ()) -> RewardTracker:  # type: ignore[assignment]
        tables = {"windows": dict(_replay(windows)), "seen": dict(_replay(seen))}
        return RewardTracker({}, ChangelogTable("windows", log, tables["windows"]), {},
                             ChangelogTable("seen", log, tables["seen"]), offers={}.get,
                             config=config)

    def totals(t: RewardTracker) -> list[tuple[str, int, int, int, float]]:
        return sorted((w.policy_version, w.size_ms, w.start, w.impressions, w.revenue)
                      for _, w in t.open_windows())

    log: Log = []
    uninterrupted = tracker(log)
    for offset, o in enumerate(outcomes):
        uninterrupted.record(o, partition=0, wall_ms=0, offset=offset)
    expected = totals(uninterrupted)
    assert sum(n for *_, n, _ in expected) == 3 * len(outcomes)  # in 3 windows each
    windows = [w for w in log if w[0] == "windows"]
    seen = [w for w in log if w[0] == "seen"]
    for w_cut in range(len(windows) + 1):
        for s_cut in range(len(seen) + 1):
            recovered = tracker([], windows[:w_cut], seen[:s_cut])
            for offset, o in enumerate(outcomes):  # nothing committed: all delivered again
                recovered.record(o, partition=0, wall_ms=0, offset=offset)
            assert totals(recovered) == expected, (w_cut, s_cut)


@pytest.mark.parametrize("per", [1, 2, 3])
def test_the_reward_ledger_publishes_no_window_twice_with_other_counts_after_a_crash(
    per: int,
) -> None:
    """Windows closing as outcomes come: a window closed and published must not be opened
    again, nor published short, whatever its clock's changelog kept (a third table). ``per``
    outcomes per write-back; write-back ``d`` goes out after ``d - 1`` landed and its outcomes
    were committed, and carries what the ledger left due after ``d - 1`` (``flushed``: the
    clock, closed windows' deletions). The worker dies with the outcomes of write-backs
    ``0 .. d - 1`` committed and any prefix of each table's records of write-back ``d``
    landed; the others are read again. Every window the recovered run publishes is the one the
    uninterrupted run published, and the windows left open are the same. (With three per
    write-back, one holds a window's outcomes and the one closing it: with the clock and the
    deletion written at once, a clock record lost let them open it anew, and a clock record
    landed ahead of the windows' closed it before they were counted again.)"""
    from streamer.app.reward_tracking import RewardConfig, RewardTracker
    from streamer.rewards import ImpressionOutcome, WindowSpec

    config = RewardConfig(window_ms=1_000, allowed_lateness_ms=0,
                          specs=(WindowSpec(60_000, 60_000),), ledger_lateness_ms=0,
                          keep_closed=True)  # as the worker's
    outcomes = [ImpressionOutcome(
        impression_id=f"i{k}", ts=T0 + k * 25_000, session_id="s", user_id="u", offer_id="o",
        variant=0, propensity=0.5, policy_version="v1", anchor_item_id="a", segment="all",
        items=("a", "b"), discount_pct=10.0, clicked=True, converted=True, revenue=1.0 + k,
        reward=1.0 + k, purchase_ids=(), attributed_at=T0 + k * 25_000, late=False)
        for k in range(7)]
    names = ("windows", "clocks", "seen")

    def tracker(log: Log, landed: dict[str, Log] | None = None) -> RewardTracker:
        tables = [ChangelogTable(n, log, dict(_replay((landed or {}).get(n, ()))))
                  for n in names]
        return RewardTracker({}, tables[0], tables[1], tables[2], offers={}.get,
                             config=config)

    def step(t: RewardTracker, offset: int, out: dict[int, tuple[int, float]]) -> None:
        for w in t.record(outcomes[offset], partition=0, wall_ms=0, offset=offset):
            out[w.window_start] = (w.impressions, w.revenue)

    def still_open(t: RewardTracker) -> list[tuple[int, int, float]]:
        return sorted((w.start, w.impressions, w.revenue) for _, w in t.open_windows())

    flushes = [range(i, min(i + per, len(outcomes))) for i in range(0, len(outcomes), per)]
    log: Log = []
    uninterrupted = tracker(log)
    expected: dict[int, tuple[int, float]] = {}
    sent: list[dict[str, int]] = []  # per table, the records written by write-back d's end
    for flush in flushes:
        for offset in flush:
            step(uninterrupted, offset, expected)
        sent.append({n: sum(1 for e in log if e[0] == n) for n in names})
        uninterrupted.flushed()  # the flush's hook: clock and deletions trail by write-backs
    assert len(expected) >= 2, "windows closed"
    expected_open = still_open(uninterrupted)
    by_table = {n: [e for e in log if e[0] == n] for n in names}
    for done, flush in enumerate(flushes):
        floor = sent[done - 1] if done else dict.fromkeys(names, 0)
        ranges = [range(floor[n], sent[done][n] + 1) for n in names]
        for cuts in itertools.product(*ranges):
            recovered = tracker([], {n: by_table[n][:c] for n, c in zip(names, cuts,
                                                                           strict=True)})
            again: dict[int, tuple[int, float]] = {}
            for later in flushes[done:]:
                for offset in later:
                    step(recovered, offset, again)
                recovered.flushed()
            assert all(expected[k] == v for k, v in again.items()), (flush, cuts)
            assert still_open(recovered) == expected_open, (flush, cuts)


def _replay(log: Log) -> Iterator[tuple[str, Any]]:
    """The (key, value) pairs a changelog ``log`` leaves, deletes applied."""
    data: dict[str, Any] = {}
    for _, key, value in log:
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return iter(data.items())
