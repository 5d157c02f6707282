"""The engine's state survives a crash at *any* point of its changelog: recovered from any
prefix of its table writes and sent every event again (at-least-once), it ends in the state of
a run that never stopped. This is the mechanism behind ``ItemRecord``: the event ids and the
counts they guard are one write, so no prefix holds one without the other.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from streamer.copurchase import TOTAL_KEY
from streamer.engine import Engine, EngineConfig, EngineState, ItemRecord
from streamer.events import OrderLine, PurchaseEvent
from streamer.events.dedup import remember

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
    for e in events:
        uninterrupted.handle_purchase(e)
    expected = snapshot(uninterrupted)
    assert expected["items"][TOTAL_KEY].count.value > 0
    for cut in range(len(log) + 1):  # the worker dies after `cut` changelog messages
        recovered = engine_on([], log[:cut])
        for e in events:  # nothing was committed: every event is delivered again
            recovered.handle_purchase(e)
        assert snapshot(recovered) == expected, f"crash after {cut} of {len(log)} writes"


def test_a_duplicate_repairs_a_lost_count_mirror() -> None:
    engine = engine_on([])
    (event,) = orders(1)
    engine.handle_purchase(event)
    mirrored = engine.state.counts["tea"]
    del engine.state.counts["tea"]  # the record's write landed, the mirror's did not
    assert engine.handle_purchase(event) == []
    assert engine.state.counts["tea"] == mirrored == engine.state.items["tea"].count


def test_each_event_counts_once_per_anchor_and_ids_stay_bounded() -> None:
    config = EngineConfig(min_support=1.0, min_interval_ms=0, dedup_per_item=4)
    engine = Engine(config, EngineState.in_memory(), Engine.v0_policy(config))
    for e in orders(12) + orders(12)[-3:]:  # the last 3 again: within the per-item memory
        engine.handle_purchase(e)
    record: ItemRecord = engine.state.items["tea"]
    assert record.stats is not None and record.stats.landmark_ms == T0
    assert len(record.seen) == 4
    assert engine.has_learned(engine.fan_out(orders(12)[-1])[0])
    # Counts are forward-decayed from the first event: compare at the landmark's scale.
    assert record.count.value == pytest.approx(
        sum(2 ** ((e.ts - T0) / (config.half_life_s * 1000)) for e in orders(12)
            if any(i.item_id == "tea" for i in e.items)), rel=1e-12)


def test_remember_never_forgets_the_id_it_is_given() -> None:
    seen: dict[str, int] = {}
    for k in range(10):
        seen = remember(seen, f"e{k}", 10 - k, ttl_ms=1, capacity=1)
        assert seen == {f"e{k}": 10 - k}
    with pytest.raises(ValueError):
        remember({}, "e", 0, ttl_ms=0, capacity=1)
