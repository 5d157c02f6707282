"""Schema events as Parquet: ``--format parquet`` of ``streamer replay``, ``convert`` and
``evaluate``, and what ``streamer convert -o EVENTS.parquet`` writes.

One row per event with the columns of both event types (:data:`SCHEMA`, the fields of
``schemas/click_event.json`` and ``schemas/purchase_event.json``): a row with ``items`` is a
purchase, a row with ``kind`` a click, as in schema JSONL; the other type's columns are null.
Reading is lenient where a warehouse export differs from what :func:`write_events` writes and
the meaning is plain: ``ts`` may be a Parquet timestamp (a naive one is UTC) instead of epoch
milliseconds, numbers may be decimals or narrower ints, and columns that are not event fields
are not read. Anything else that does not fit the schema is an error naming the row.

>>> import tempfile, pathlib
>>> from streamer.events import OrderLine, PurchaseEvent
>>> path = pathlib.Path(tempfile.mkdtemp(), "events.parquet")
>>> order = PurchaseEvent(event_id="p1", ts=1, user_id="u", session_id="s", order_id="o",
...                       items=[OrderLine(item_id="tea", quantity=2, unit_price=3.5)])
>>> write_events([order], path)
1
>>> next(read_rows(path))[1]["items"]
[{'item_id': 'tea', 'quantity': 2, 'unit_price': 3.5}]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from streamer.events import ClickEvent, PurchaseEvent

__all__ = ["SCHEMA", "read_rows", "write_events"]

SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("ts", pa.int64()),
    ("user_id", pa.string()),
    ("session_id", pa.string()),
    # clicks
    ("item_id", pa.string()),
    ("kind", pa.string()),
    ("variant", pa.int64()),
    ("propensity", pa.float64()),
    ("price", pa.float64()),
    # purchases
    ("order_id", pa.string()),
    ("items", pa.list_(pa.struct([
        ("item_id", pa.string()), ("quantity", pa.int64()), ("unit_price", pa.float64())]))),
    # both
    ("offer_id", pa.string()),
])

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Rows per record batch read or written: bounds the Arrow memory beside the events.
BATCH_ROWS = 65_536


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, row)`` of an events Parquet file: the event fields it has, nulls
    and the columns that are not event fields left out, timestamps as epoch ms and decimals as
    floats (what the wire codec takes)."""
    source = pq.ParquetFile(path)
    columns = [name for name in source.schema_arrow.names if name in SCHEMA.names]
    numbers = itertools.count(1)
    for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        for row in batch.to_pylist():
            yield next(numbers), _plain_row(row)


def write_events(events: Iterable[ClickEvent | PurchaseEvent], path: Path) -> int:
    """Write ``events`` to ``path`` as Parquet of :data:`SCHEMA`, in their order; how many."""
    written = 0
    stream = iter(events)
    with pq.ParquetWriter(path, SCHEMA) as writer:
        while rows := [msgspec.to_builtins(e) for e in itertools.islice(stream, BATCH_ROWS)]:
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
            written += len(rows)
    return written


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {key: _plain(value) for key, value in row.items() if value is not None}
    items = out.get("items")
    if isinstance(items, list):
        out["items"] = [{k: _plain(v) for k, v in line.items() if v is not None}
                        if isinstance(line, dict) else line for line in items]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, Decimal):
        return float(value)
    return value
