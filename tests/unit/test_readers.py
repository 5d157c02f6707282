"""Readers and conversion: hand-written rows first, then the real files in the shared data dir.

The real-data tests never skip: the data directory (``STREAMER_DATA_DIR``, else
``<repo>/../shared/data``) exists in CI, and its absence is a failure with a clear message.
Every figure they check is quoted from the dataset's PROVENANCE.txt, and the test checks the
quote is still there, so the two cannot drift apart silently.
"""

from __future__ import annotations

import gzip
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from streamer.events import ClickEvent, EventCodec, OrderLine, PurchaseEvent
from streamer.replay import (
    FORMATS,
    InvalidRecord,
    ReaderFormat,
    ReaderStats,
    convert,
    detect_format,
    read_events,
)

Event = ClickEvent | PurchaseEvent
CODEC = EventCodec()
REPO = Path(__file__).resolve().parents[2]

RETAIL_HEADER = (
    "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
)
BAKERY_HEADER = "Date,Time,Transaction,Item\n"


def ms(text: str) -> int:
    """Epoch ms of an ISO time with offset."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read(path: Path, fmt: ReaderFormat, **kw: object) -> tuple[list[Event], ReaderStats]:
    stats = ReaderStats()
    return list(read_events(path, fmt, stats=stats, **kw)), stats  # type: ignore[arg-type]


def assert_schema_valid(events: list[Event]) -> None:
    """Readers build Structs directly (unvalidated): prove each one survives the codec."""
    for event in events:
        decode = CODEC.decode_purchase if isinstance(event, PurchaseEvent) else CODEC.decode_click
        assert decode(CODEC.encode(event)) == event


def assert_time_ordered(events: list[Event]) -> None:
    assert [e.ts for e in events] == sorted(e.ts for e in events)


# --- bakery ----------------------------------------------------------------------------------


def test_bakery_transactions_become_orders_in_time_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bakery.csv",
        BAKERY_HEADER
        + "2017-04-09,15:04:24,9,Coffee\n"  # summer: BST, UTC+1
        + "2016-10-30,10:05:34,2,Scandinavian\n"
        + "2016-10-30,10:05:34,2,Scandinavian\n"
        + "2016-10-30,10:05:34,2,NONE\n"
        + "2016-10-30,10:05:34,2,Bread\n"
        + "2016-10-30,10:07:57,3,NONE\n"
        + "not-a-date,10:07:57,4,Bread\n",
    )
    events, stats = read(path, "bakery")
    assert [e.event_id for e in events] == ["bk-2", "bk-9"]
    first, last = events
    assert isinstance(first, PurchaseEvent)
    assert [(line.item_id, line.quantity, line.unit_price) for line in first.items] == [
        ("Scandinavian", 2, 1.0),
        ("Bread", 1, 1.0),
    ]
    assert (first.order_id, first.user_id, first.session_id) == ("2", "bk-2", "bk-2")
    assert first.ts == ms("2016-10-30T10:05:34+00:00")  # the morning after BST ended
    assert last.ts == ms("2017-04-09T15:04:24+01:00")
    # The malformed row's transaction is not seen: nothing of it could be read.
    assert (stats.rows, stats.orders_seen, stats.purchases, stats.order_lines) == (7, 3, 2, 3)
    assert stats.skipped_rows == Counter(none_item=2, malformed=1)
    assert stats.dropped_orders == Counter(only_none_items=1)
    assert_schema_valid(events)


def test_bakery_reupload_format_reads_the_same_baskets(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bread_basket.csv",
        "Transaction,Item,date_time,period_day,weekday_weekend\n"
        "1,Bread,30-10-2016 09:58,morning,weekend\n"
        "2,Scandinavian,30-10-2016 10:05,morning,weekend\n"
        "2,Scandinavian,30-10-2016 10:05,morning,weekend\n",
    )
    events, _ = read(path, "bakery")
    assert [(e.event_id, e.ts) for e in events] == [
        ("bk-1", ms("2016-10-30T09:58:00+00:00")),
        ("bk-2", ms("2016-10-30T10:05:00+00:00")),
    ]
    assert detect_format(path) == "bakery"


# --- UCI Online Retail -----------------------------------------------------------------------

RETAIL_ROWS = (
    RETAIL_HEADER
    # Out of time order on purpose: the reader orders by event time.
    + "536400,22423,REGENCY CAKESTAND 3 TIER,1,2011-06-01 10:00:00,12.75,,United Kingdom\n"
    + "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
    + "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom\n"
    + "536365,85123A,WHITE HANGING HEART,2,2010-12-01 08:27:00,2.95,17850.0,United Kingdom\n"
    + "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom\n"
    + "536380,22000,damaged,-5,2010-12-01 09:45:00,0,,United Kingdom\n"
    + "536381,22001,,3,2010-12-01 09:46:00,0,,United Kingdom\n"
    # Bookkeeping, not sales: UCI's A563185 has a positive price, A563186 a negative one.
    + "A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,11062.06,,United Kingdom\n"
    + "A563186,B,Adjust bad debt,1,2011-08-12 14:51:00,-11062.06,,United Kingdom\n"
    + "536382,22002,LINE WITH A GIFT,1,2010-12-01 09:47:00,0.0,13047.0,United Kingdom\n"
    + "536382,22003,PAID LINE,1,2010-12-01 09:47:00,1.25,13047.0,United Kingdom\n"
    + "536383,22004,BAD QUANTITY,x,2010-12-01 09:48:00,1.25,13047.0,United Kingdom\n"
)


@pytest.mark.parametrize("name", ["retail.csv", "retail.csv.gz"])
def test_online_retail_invoices_become_purchases(tmp_path: Path, name: str) -> None:
    events, stats = read(write(tmp_path / name, RETAIL_ROWS), "online-retail")
    assert [e.event_id for e in events] == ["or-536365", "or-536382", "or-536400"]
    first, gift, summer = events
    assert isinstance(first, PurchaseEvent) and isinstance(summer, PurchaseEvent)
    # One line per StockCode; the unit price is the quantity-weighted mean (revenue preserved).
    assert [(x.item_id, x.quantity, x.unit_price) for x in first.items] == [
        ("85123A", 8, round((6 * 2.55 + 2 * 2.95) / 8, 4)),
        ("71053", 6, 3.39),
    ]
    assert (first.order_id, first.session_id, first.user_id) == ("536365", "536365", "17850")
    assert first.ts == ms("2010-12-01T08:27:00+00:00")  # the invoice's latest row, GMT
    assert summer.ts == ms("2011-06-01T10:00:00+01:00")  # BST
    assert summer.user_id == "guest-536400"
    assert isinstance(gift, PurchaseEvent)
    assert [x.item_id for x in gift.items] == ["22003"]
    assert (stats.rows, stats.orders_seen) == (12, 9)
    assert stats.skipped_rows == Counter(
        cancellation=1, adjustment=2, non_positive_quantity=1, non_positive_price=2, malformed=1
    )
    assert stats.dropped_orders == Counter(
        cancellation=1, adjustment=2, no_positive_quantity=2, no_positive_price=1
    )
    assert stats.purchases + sum(stats.dropped_orders.values()) == stats.orders_seen
    assert_schema_valid(events)


@pytest.mark.parametrize("name", ["retail.csv", "retail.csv.gz"])
def test_an_iso_8859_1_export_reads_as_its_utf_8_twin(tmp_path: Path, name: str) -> None:
    """The common CSV export of UCI Online Retail is ISO-8859-1 (a description ``CAF\xc9``)."""
    text = (RETAIL_HEADER + "536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850,UK\n"
            + "536365,71053,CAFÉ LANTERN,6,12/1/2010 8:26,3.39,17850,UK\n" * 3
            + "536366,22633,HAND WARMER ÉTOILE,6,12/1/2010 8:28,1.85,17850,UK\n")
    latin1 = tmp_path / f"latin1-{name}"
    data = text.encode("latin-1")
    latin1.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert detect_format(latin1) == "online-retail"
    events, stats = read(latin1, "online-retail")
    assert (events, stats) == read(write(tmp_path / name, text), "online-retail")
    assert stats.rows == 5  # counted once, though read twice


def test_a_windows_1252_export_keeps_its_item_names(tmp_path: Path) -> None:
    """Item ids come from the text: bytes 0x80-0x9F are a spreadsheet's quotes and dashes."""
    tea = "Tea \u2013 Earl Grey"  # an en dash, 0x96 in Windows-1252
    path = tmp_path / "bakery.csv"
    path.write_bytes((BAKERY_HEADER + "2016-10-30,09:58:11,1,Café crème\n"
                      f"2016-10-30,09:58:11,1,{tea}\n").encode("cp1252"))
    (order,), _ = read(path, "bakery")
    assert isinstance(order, PurchaseEvent)
    assert [line.item_id for line in order.items] == ["Café crème", tea]
    # ... while UTF-8 stays UTF-8, not read as Windows-1252 mojibake.
    (order,), _ = read(write(path, BAKERY_HEADER + f"2016-10-30,09:58:11,1,{tea}\n"), "bakery")
    assert isinstance(order, PurchaseEvent)
    assert [line.item_id for line in order.items] == [tea]


def test_a_csv_in_neither_encoding_raises_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bakery.csv"
    path.write_bytes(BAKERY_HEADER.encode() + b"2016-10-30,09:58:11,1,Bread\n"
                     b"2016-10-30,09:58:11,1,Caf\xe9\x81\n")  # 0x81: undefined in both
    with pytest.raises(InvalidRecord, match=r"bakery.csv:3: neither UTF-8 nor Windows-1252"):
        read(path, "bakery")


def test_online_retail_keeps_the_first_200_items_of_a_huge_invoice(tmp_path: Path) -> None:
    rows = [f"536999,{code},X,1,2010-12-02 10:00:00,1.0,12345.0,UK\n" for code in range(205)]
    rows.append("536999,0,X,1,2010-12-02 10:00:00,1.0,12345.0,UK\n")  # adds to a kept line
    rows.append("536999,204,X,1,2010-12-02 10:00:00,1.0,12345.0,UK\n")  # to a dropped one
    events, stats = read(write(tmp_path / "r.csv", RETAIL_HEADER + "".join(rows)), "online-retail")
    (order,) = events
    assert isinstance(order, PurchaseEvent)
    assert [x.item_id for x in order.items] == [str(c) for c in range(200)]
    assert order.items[0].quantity == 2
    assert stats.skipped_rows == Counter(over_line_limit=6)
    assert stats.cut_orders == 1  # ... and said in words, not only as a count of rows
    assert stats.cut_note() == ("1 orders over 200 lines were cut to their first 200: the wire "
                                "format's limit; `streamer evaluate` the original file for "
                                "whole orders")
    assert_schema_valid(events)


def test_online_retail_keeps_whole_invoices_when_asked(tmp_path: Path) -> None:
    # The in-process evaluation reads whole orders: no wire limit applies there.
    rows = [f"536999,{code},X,1,2010-12-02 10:00:00,1.0,12345.0,UK\n" for code in range(205)]
    path = write(tmp_path / "r.csv", RETAIL_HEADER + "".join(rows))
    events, stats = read(path, "online-retail", max_order_lines=None)
    (order,) = events
    assert isinstance(order, PurchaseEvent)
    assert [x.item_id for x in order.items] == [str(c) for c in range(205)]
    assert stats.skipped_rows == Counter() and stats.cut_note() is None
    events, stats = read(path, "online-retail", max_order_lines=3)
    assert [x.item_id for x in events[0].items] == ["0", "1", "2"]  # type: ignore[union-attr]
    assert stats.skipped_rows == Counter(over_line_limit=202)
    assert stats.cut_note().startswith("1 orders over 3 lines were cut")  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        read_events(path, "online-retail", max_order_lines=0)


def test_a_csv_without_the_expected_columns_names_the_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "InvoiceNo,StockCode,Quantity\n1,2,3\n")
    with pytest.raises(InvalidRecord, match="InvoiceDate") as info:
        list(read_events(path, "online-retail"))
    assert info.value.line == 1


# --- Taobao UserBehavior ---------------------------------------------------------------------

# 1511971199 = 2017-11-29 15:59:59Z = 23:59:59 in China; one second later is the next day there.
TAOBAO_ROWS = (
    "7,100,1,buy,1511971199\n"
    "7,100,1,buy,1511971000\n"
    "7,101,1,buy,1511970000\n"
    "7,102,1,buy,1511971200\n"
    "7,100,1,pv,1511960000\n"
    "7,100,1,fav,1511960001\n"
    "7,100,1,cart,1511960002\n"
    "8,100,1,pv,1511960000\n"
    "8,100,1,click,1511960000\n"
    "8,100,1,pv\n"
)


def test_taobao_behaviours_map_to_clicks_and_daily_orders(tmp_path: Path) -> None:
    events, stats = read(write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS), "taobao")
    clicks = [e for e in events if isinstance(e, ClickEvent)]
    orders = [e for e in events if isinstance(e, PurchaseEvent)]
    assert [(c.user_id, c.kind, c.ts) for c in clicks] == [
        ("7", "view", 1_511_960_000_000),
        ("8", "view", 1_511_960_000_000),  # a tie keeps file order
        ("7", "click", 1_511_960_001_000),
        ("7", "add_to_cart", 1_511_960_002_000),
    ]
    assert clicks[0].event_id == "tb-7-100-pv-1511960000"
    assert clicks[0].session_id == "7-20171129"
    assert [c.price for c in clicks] == [None] * 4
    day1, day2 = orders
    assert (day1.event_id, day1.order_id, day1.session_id) == (
        "tb-7-20171129",
        "7-20171129",
        "7-20171129",
    )
    assert day1.ts == 1_511_971_199_000  # the day's last buy
    assert [(x.item_id, x.quantity, x.unit_price) for x in day1.items] == [
        ("100", 2, 1.0),
        ("101", 1, 1.0),
    ]
    assert (day2.event_id, [x.item_id for x in day2.items]) == ("tb-7-20171130", ["102"])
    assert stats.skipped_rows == Counter(unknown_behavior=1, malformed=1)
    assert (stats.rows, stats.orders_seen, stats.clicks, stats.purchases) == (10, 2, 4, 2)
    assert_time_ordered(events)
    assert_schema_valid(events)


# --- jsonl and conversion --------------------------------------------------------------------


def test_convert_then_read_jsonl_gives_the_same_events(tmp_path: Path) -> None:
    source = write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    original, _ = read(source, "taobao")
    stats = convert(source, "taobao", tmp_path / "out.jsonl")
    assert stats.events == len(original) == 6
    assert "6 events" in stats.summary()
    again, again_stats = read(tmp_path / "out.jsonl", "jsonl")
    assert again == original
    assert (again_stats.rows, again_stats.orders_seen) == (6, 2)
    assert detect_format(tmp_path / "out.jsonl") == "jsonl"


def test_convert_is_deterministic_and_gzip_aware(tmp_path: Path) -> None:
    source = write(tmp_path / "retail.csv", RETAIL_ROWS)
    for name in ("a.jsonl", "b.jsonl", "a.jsonl.gz", "b.jsonl.gz"):
        convert(source, "online-retail", tmp_path / name)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    plain, _ = read(tmp_path / "a.jsonl", "jsonl")
    packed, _ = read(tmp_path / "a.jsonl.gz", "jsonl")
    assert plain == packed and len(plain) == 3


def test_convert_with_a_limit_keeps_the_earliest_events(tmp_path: Path) -> None:
    source = write(tmp_path / "retail.csv", RETAIL_ROWS)
    stats = convert(source, "online-retail", tmp_path / "o.jsonl", limit=2)
    events, _ = read(tmp_path / "o.jsonl", "jsonl")
    assert [e.event_id for e in events] == ["or-536365", "or-536382"]
    assert stats.purchases == 2


def test_a_failed_conversion_leaves_the_output_untouched(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.jsonl", '{"event_id": "e1", "kind": "view"}\n')
    out = write(tmp_path / "out.jsonl", "previous\n")
    with pytest.raises(InvalidRecord):
        convert(bad, "jsonl", out)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out.jsonl"]
    with pytest.raises(ValueError, match="overwrite the input"):
        convert(bad, "jsonl", bad)


def _click_line(event_id: str, ts: int) -> str:
    return CODEC.encode(
        ClickEvent(event_id=event_id, ts=ts, user_id="u", session_id="s", item_id="i", kind="view")
    ).decode()


def test_jsonl_is_ordered_by_time_and_skips_blank_lines(tmp_path: Path) -> None:
    lines = [
        _click_line("b", 1_700_000_000_002),
        "",
        _click_line("a", 1_700_000_000_001),
        _click_line("c", 1_700_000_000_002),
    ]
    events, stats = read(write(tmp_path / "e.jsonl", "\n".join(lines) + "\n"), "jsonl")
    assert [e.event_id for e in events] == ["a", "b", "c"]
    assert (stats.rows, stats.skipped_rows) == (4, Counter(blank_line=1))


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ('{"event_id": "e1", "kind": "view"}', "schema"),
        ('{"event_id": "e1", "items": []}', "schema"),
        ('{"event_id": "e1"}', "neither a purchase"),
        ("[1, 2]", "neither a purchase"),
        ('{"event_id": ', "not_json"),
        ('{"event_id": "\xff"}', "not_json"),
        ("[" * 5000 + "]" * 5000, "not_json"),  # raised RecursionError, naming no line
    ],
)
def test_an_invalid_jsonl_line_raises_naming_its_line_number(
    tmp_path: Path, bad_line: str, fragment: str
) -> None:
    path = tmp_path / "e.jsonl"
    good = _click_line("a", 1_700_000_000_000)
    # "\xff" in a case stands for the invalid UTF-8 byte 0xFF, not for U+00FF.
    text = f"{good}\n\n{bad_line}\n{good}\n"
    path.write_bytes(text.encode().replace("\xff".encode(), b"\xff"))
    with pytest.raises(InvalidRecord) as info:
        list(read_events(path, "jsonl"))
    assert info.value.line == 3
    assert f"{path}:3: " in str(info.value)
    assert fragment in info.value.reason


# --- arguments, limits, format detection -----------------------------------------------------


def test_arguments_are_checked_before_the_first_event(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", BAKERY_HEADER)
    with pytest.raises(ValueError, match="unknown format"):
        read_events(path, "xlsx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        read_events(path, "bakery", limit=-1)
    with pytest.raises(FileNotFoundError):
        read_events(tmp_path / "missing.csv", "bakery")
    assert list(read_events(path, "bakery")) == []


def test_limit_keeps_the_first_events_in_time_order(tmp_path: Path) -> None:
    path = write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    everything, _ = read(path, "taobao")
    for limit in (0, 1, 3, 100):
        events, stats = read(path, "taobao", limit=limit)
        assert events == everything[:limit]
        assert stats.events == len(events)


def test_detect_format_knows_every_format(tmp_path: Path) -> None:
    samples = {
        "jsonl": _click_line("a", 1_700_000_000_000) + "\n",
        "online-retail": RETAIL_ROWS,
        "taobao": TAOBAO_ROWS,
        "bakery": BAKERY_HEADER,
    }
    assert set(samples) | {"parquet"} == set(FORMATS)
    for fmt, text in samples.items():
        assert detect_format(write(tmp_path / f"{fmt}.gz", text)) == fmt
    convert(write(tmp_path / "b.csv", BAKERY_HEADER), "bakery", tmp_path / "e.parquet")
    assert detect_format(tmp_path / "e.parquet") == "parquet"
    with pytest.raises(ValueError, match="cannot tell"):
        detect_format(write(tmp_path / "other.csv", "a,b\n"))


# --- parquet ---------------------------------------------------------------------------------


def every_kind_of_event() -> list[Event]:
    """Clicks with and without their optional fields, purchases with and without an offer."""
    t = 1_700_000_000_000
    return [
        ClickEvent(event_id="c1", ts=t, user_id="u1", session_id="s1", item_id="tea",
                   kind="view"),
        ClickEvent(event_id="c2", ts=t + 5, user_id="u1", session_id="s1", item_id="tea",
                   kind="offer_impression", offer_id="o-1", variant=2, propensity=0.25,
                   price=4.5),
        PurchaseEvent(event_id="p1", ts=t + 9, user_id="u1", session_id="s1", order_id="r1",
                      items=[OrderLine(item_id="tea", quantity=2, unit_price=4.5),
                             OrderLine(item_id="cup", quantity=1, unit_price=12.0)],
                      offer_id="o-1"),
        PurchaseEvent(event_id="p2", ts=t + 2, user_id="u2", session_id="s2", order_id="r2",
                      items=[OrderLine(item_id="jam", quantity=1, unit_price=3.0)]),
    ]


def test_parquet_round_trips_every_kind_of_event(tmp_path: Path) -> None:
    events = every_kind_of_event()
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(CODEC.encode(e) + b"\n" for e in events))
    stats = convert(source, "jsonl", tmp_path / "events.parquet")
    assert stats.events == 4
    again, again_stats = read(tmp_path / "events.parquet", "parquet")
    assert again == sorted(events, key=lambda e: e.ts)  # in event-time order, like every format
    assert (again_stats.rows, again_stats.orders_seen, again_stats.clicks) == (4, 2, 2)
    assert_schema_valid(again)
    # ... and back to JSONL: the same bytes as the JSONL converted from the original.
    convert(tmp_path / "events.parquet", "parquet", tmp_path / "back.jsonl")
    convert(source, "jsonl", tmp_path / "direct.jsonl")
    assert (tmp_path / "back.jsonl").read_bytes() == (tmp_path / "direct.jsonl").read_bytes()


def test_parquet_from_a_warehouse_reads_timestamps_decimals_and_skips_other_columns(
        tmp_path: Path) -> None:
    """An export that is not what convert writes but means the same: ``ts`` a timestamp
    (naive: UTC), prices decimals, quantities int32, an extra column."""
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    line = pa.struct([("item_id", pa.string()), ("quantity", pa.int32()),
                      ("unit_price", pa.decimal128(9, 2))])
    table = pa.table({
        "event_id": ["p1", "c1"],
        "ts": pa.array([datetime(2024, 3, 1, 12, 0, 0, 250000),
                        datetime(2024, 3, 1, 11, 59)], pa.timestamp("us")),
        "user_id": ["u", "u"], "session_id": ["s", "s"],
        "order_id": ["r1", None],
        "items": pa.array([[{"item_id": "tea", "quantity": 2, "unit_price": Decimal("4.50")}],
                           None], pa.list_(line)),
        "item_id": [None, "tea"], "kind": [None, "view"],
        "warehouse_partition": ["2024-03-01", "2024-03-01"],
    })
    pq.write_table(table, tmp_path / "export.parquet")
    click, purchase = read(tmp_path / "export.parquet", "parquet")[0]
    noon = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
    assert click == ClickEvent(event_id="c1", ts=noon - 60_000, user_id="u", session_id="s",
                               item_id="tea", kind="view")
    assert purchase == PurchaseEvent(event_id="p1", ts=noon + 250, user_id="u", session_id="s",
                                     order_id="r1", items=[OrderLine(item_id="tea", quantity=2,
                                                                     unit_price=4.5)])


def test_an_invalid_parquet_row_raises_naming_its_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from streamer.replay.parquet import SCHEMA

    rows = [CODEC.encode(e) for e in every_kind_of_event()]
    good = [msgspec.json.decode(r) for r in rows]
    bad_price = {**good[2], "items": [{"item_id": "tea", "quantity": 1, "unit_price": -1.0}]}
    neither = {"event_id": "x", "ts": 1_700_000_000_000, "user_id": "u", "session_id": "s"}
    for bad, number, reason in ((bad_price, 2, "unit_price"), (neither, 2, "neither")):
        path = tmp_path / f"{number}-{reason}.parquet"
        pq.write_table(pa.Table.from_pylist([good[0], bad, good[1]], schema=SCHEMA), path)
        with pytest.raises(InvalidRecord, match=reason) as caught:
            read(path, "parquet")
        assert caught.value.line == number and str(caught.value).startswith(f"{path}:2: ")
    not_parquet = write(tmp_path / "events.parquet", "event_id,ts\n")
    with pytest.raises(InvalidRecord, match="not_parquet"):
        read(not_parquet, "parquet")
    out = tmp_path / "out.parquet"
    with pytest.raises(InvalidRecord):
        convert(tmp_path / "2-neither.parquet", "parquet", out)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


# --- the real files --------------------------------------------------------------------------


def data_dir() -> Path:
    configured = os.environ.get("STREAMER_DATA_DIR")
    path = Path(configured) if configured else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(
            f"data directory {path} not found: set STREAMER_DATA_DIR to the directory holding "
            "online_retail/, taobao_userbehavior_head/ and bakery/ (CI provides it)",
            pytrace=False,
        )
    return path


def dataset(
    subdir: str, name: str, fmt: ReaderFormat, quoted: list[str]
) -> Iterator[tuple[list[Event], ReaderStats]]:
    folder = data_dir() / subdir
    if not (folder / name).is_file():
        pytest.fail(f"{folder / name} is missing from the data directory", pytrace=False)
    provenance = (folder / "PROVENANCE.txt").read_text(encoding="utf-8")
    stale = [q for q in quoted if q not in provenance]
    assert stale == [], f"figures no longer stated in {folder}/PROVENANCE.txt"
    stats = ReaderStats()
    events = list(read_events(folder / name, fmt, stats=stats))
    yield events, stats


@pytest.fixture(scope="module")
def online_retail() -> Iterator[tuple[list[Event], ReaderStats]]:
    yield from dataset(
        "online_retail",
        "online_retail_all.csv.gz",
        "online-retail",
        [
            "rows 541,909",
            "invoices 25,900",
            "cancellation rows 9,288",
            "non-cancel invoices with Quantity>0: 20,728",
            "2010-12-01 08:26 .. 2011-12-09 12:50",
            "2,517 rows with UnitPrice<=0",
        ],
    )


@pytest.fixture(scope="module")
def taobao() -> Iterator[tuple[list[Event], ReaderStats]]:
    yield from dataset(
        "taobao_userbehavior_head",
        "UserBehavior_head.csv",
        "taobao",
        [
            "84,475 rows",
            "815 users",
            "pv 75,872 | cart 4,497 | fav 2,356 | buy 1,750",
            "1,141 user-days; 1 item: 798 | 2: 223 | 3: 71 | 4: 28 | >=5: 21 (343 with >=2)",
            "2017-12-03 15:59:23Z",
        ],
    )


@pytest.fixture(scope="module")
def bakery() -> Iterator[tuple[list[Event], ReaderStats]]:
    yield from dataset(
        "bakery",
        "BreadBasket_DMS.csv",
        "bakery",
        [
            "21,293 rows (786 rows have Item 'NONE')",
            "9,531 transaction ids (9,465 with real items)",
            "1: 3,948 | 2: 3,059 | 3: 1,471 | 4: 662 | 5: 234 | >=6: 91",
            "2016-10-30 09:58:11 .. 2017-04-09 15:04:24",
        ],
    )


def test_real_bakery_round_trips_through_parquet(
        bakery: tuple[list[Event], ReaderStats], tmp_path: Path) -> None:
    from streamer.replay.parquet import write_events

    events, _ = bakery
    assert write_events(events, tmp_path / "bakery.parquet") == len(events)
    assert read(tmp_path / "bakery.parquet", "parquet")[0] == events


def basket_sizes(events: list[Event], top: int) -> Counter[int]:
    return Counter(min(len(e.items), top) for e in events if isinstance(e, PurchaseEvent))


def utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, tz=UTC)


def test_real_online_retail_counts_match_provenance(
    online_retail: tuple[list[Event], ReaderStats],
) -> None:
    events, stats = online_retail
    assert stats.rows == 541_909
    assert stats.orders_seen == 25_900
    assert stats.skipped_rows["cancellation"] == 9_288
    # Every non-cancelled invoice with units is a purchase unless none of its lines had a price
    # or it is one of the three bad-debt adjustments (A563185-A563187, one at a positive price).
    assert stats.dropped_orders["adjustment"] == stats.skipped_rows["adjustment"] == 3
    assert (stats.purchases + stats.dropped_orders["no_positive_price"]
            + stats.dropped_orders["adjustment"]) == 20_728
    assert not any(e.order_id.startswith("A") for e in events if isinstance(e, PurchaseEvent))
    assert stats.purchases + sum(stats.dropped_orders.values()) == 25_900
    # Rows with UnitPrice <= 0 outside cancellations are all skipped for quantity or price.
    assert stats.skipped_rows["non_positive_price"] <= 2_517
    assert stats.clicks == 0
    assert stats.cut_orders == 236  # invoices of more than 200 items, cut to fit the wire
    # London is on GMT in December, so local and UTC times agree at both ends.
    assert utc(events[0].ts) == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    assert utc(events[-1].ts) == datetime(2011, 12, 9, 12, 50, tzinfo=UTC)
    assert_time_ordered(events)
    assert len({e.event_id for e in events}) == len(events)


def test_real_online_retail_events_are_schema_valid(
    online_retail: tuple[list[Event], ReaderStats],
) -> None:
    events, _ = online_retail
    assert_schema_valid(events)
    assert max(len(e.items) for e in events if isinstance(e, PurchaseEvent)) == 200


def test_real_taobao_counts_match_provenance(taobao: tuple[list[Event], ReaderStats]) -> None:
    events, stats = taobao
    assert stats.rows == 84_475
    kinds = Counter(e.kind if isinstance(e, ClickEvent) else "buy" for e in events)
    assert kinds == Counter(view=75_872, add_to_cart=4_497, click=2_356, buy=1_141)
    assert stats.orders_seen == stats.purchases == 1_141
    sizes = basket_sizes(events, 5)
    assert (sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]) == (798, 223, 71, 28, 21)
    # Every buy row is one unit of one line.
    units = sum(x.quantity for e in events if isinstance(e, PurchaseEvent) for x in e.items)
    assert units == 1_750
    assert len({e.user_id for e in events}) == 815
    assert utc(events[-1].ts) == datetime(2017, 12, 3, 15, 59, 23, tzinfo=UTC)
    assert stats.skipped_rows == Counter()
    assert_time_ordered(events)
    assert_schema_valid(events)
    assert len({e.event_id for e in events}) == len(events)


def test_real_bakery_counts_match_provenance(bakery: tuple[list[Event], ReaderStats]) -> None:
    events, stats = bakery
    assert stats.rows == 21_293
    assert stats.skipped_rows == Counter(none_item=786)
    assert stats.orders_seen == 9_531
    assert stats.purchases == len(events) == 9_465
    assert stats.dropped_orders == Counter(only_none_items=9_531 - 9_465)
    sizes = basket_sizes(events, 6)
    assert [sizes[n] for n in range(1, 7)] == [3_948, 3_059, 1_471, 662, 234, 91]
    # Edinburgh local time: GMT at the start (after 2016-10-30 01:00Z), BST at the end.
    assert utc(events[0].ts) == datetime(2016, 10, 30, 9, 58, 11, tzinfo=UTC)
    assert utc(events[-1].ts) == datetime(2017, 4, 9, 14, 4, 24, tzinfo=UTC)
    assert_time_ordered(events)
    assert_schema_valid(events)
