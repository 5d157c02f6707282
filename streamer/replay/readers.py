"""Readers turning historical data files into wire events, in event-time order.

Every reader yields :class:`~streamer.events.ClickEvent` and
:class:`~streamer.events.PurchaseEvent` values that satisfy the schemas in ``schemas/``, ordered
by ``ts`` (ties keep file order), with **deterministic** ``event_id`` values derived from the
source records, so that replaying a file twice never counts an event twice downstream.

To order by event time a reader holds the whole file's events in memory before yielding the
first one (about 100 bytes per click and per order line): fine for the datasets below, not for
the full 100M-row Taobao file. Plain and gzip files are both accepted (detected by magic bytes).

The CSV formats are read as UTF-8 (with or without a byte-order mark) or, when a file is not
UTF-8, as a whole as Windows-1252: the widely circulated CSV export of UCI Online Retail is
ISO-8859-1 (``CAF\xc9`` in a description), which Windows-1252 reads alike except for bytes
0x80-0x9F, control codes in ISO-8859-1 and quotes and dashes in a spreadsheet's export. A file
that is neither is an :class:`InvalidRecord` naming its first undecodable line: text is never
guessed at, since item ids come from it. Schema JSONL is UTF-8, as JSON is.

Formats (:data:`ReaderFormat`):

``jsonl``
    One schema event per line (the universal format, what :func:`~streamer.replay.convert`
    writes): a line with ``items`` is a purchase, one with ``kind`` a click. An invalid line
    raises :class:`InvalidRecord` naming the file and line number: a file that claims to hold
    schema events and does not is a bug upstream, and skipping would hide it. Blank lines are
    skipped and counted.
``online-retail``
    The UCI Online Retail CSV (header ``InvoiceNo,StockCode,...``). One invoice -> one
    ``PurchaseEvent`` (see :func:`read_events` for every rule).
``taobao``
    Alibaba's UserBehavior CSV, no header: ``user_id,item_id,category_id,behavior,unix_seconds``.
``bakery``
    The "BreadBasket_DMS" log (``Date,Time,Transaction,Item``), or its re-upload with
    ``Transaction,Item,date_time,...`` columns.
``parquet``
    Schema events as Parquet rows, the columns of both event types
    (:mod:`streamer.replay.parquet`): a row with ``items`` is a purchase, one with ``kind`` a
    click. Like ``jsonl``, an invalid row raises :class:`InvalidRecord` naming its row number.

>>> import tempfile, pathlib
>>> tmp = tempfile.TemporaryDirectory()
>>> path = pathlib.Path(tmp.name) / "bakery.csv"
>>> _ = path.write_text("Date,Time,Transaction,Item\\n"
...                     "2016-10-30,10:05:34,2,Scandinavian\\n2016-10-30,10:05:34,2,Scandinavian\\n"
...                     "2016-10-30,09:58:11,1,Bread\\n2016-10-30,09:58:11,1,NONE\\n")
>>> stats = ReaderStats()
>>> [(e.event_id, [(line.item_id, line.quantity) for line in e.items])
...  for e in read_events(path, "bakery", stats=stats)]
[('bk-1', [('Bread', 1)]), ('bk-2', [('Scandinavian', 2)])]
>>> stats.rows, stats.purchases, dict(stats.skipped_rows)
(4, 2, {'none_item': 1})
>>> detect_format(path)
'bakery'
>>> tmp.cleanup()
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache, partial, wraps
from pathlib import Path
from typing import Any, Literal, TextIO, get_args
from zoneinfo import ZoneInfo

import msgspec

from streamer.events import (
    ClickEvent,
    ClickKind,
    EventCodec,
    InvalidEvent,
    OrderLine,
    PurchaseEvent,
    internal_decoder,
)
from streamer.events.models import (
    MAX_ID_LEN,
    MAX_ORDER_LINES,
    MAX_PRICE,
    MAX_QUANTITY,
    TS_MAX_MS,
    TS_MIN_MS,
)

ReaderFormat = Literal["jsonl", "online-retail", "taobao", "bakery", "parquet"]
FORMATS: tuple[ReaderFormat, ...] = get_args(ReaderFormat)

Event = ClickEvent | PurchaseEvent
PathLike = str | Path

#: Unit price given to order lines of datasets without prices (Taobao, bakery): revenue then
#: counts units sold, which keeps revenue-weighted metrics meaningful instead of all zero.
UNPRICED_UNIT_PRICE = 1.0

#: Taobao behaviours -> click kinds. ``fav`` (add to favourites) becomes ``click``: it is
#: explicit interest beyond a page view, short of a cart, and the data has no other click.
TAOBAO_CLICK_KINDS: dict[str, ClickKind] = {"pv": "view", "fav": "click", "cart": "add_to_cart"}

_UK = ZoneInfo("Europe/London")
# China has had no daylight saving time since 1991: a fixed offset needs no tz database.
_CHINA = timezone(timedelta(hours=8))
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"  # a Parquet file's first (and last) bytes: detected without pyarrow


class InvalidRecord(ValueError):
    """A record of a source file that cannot be read; says which file and line.

    >>> str(InvalidRecord("events.jsonl", 7, "schema: Object missing required field `ts`"))
    'events.jsonl:7: schema: Object missing required field `ts`'
    """

    def __init__(self, path: PathLike, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


@dataclass(slots=True)
class ReaderStats:
    """What a reader read, yielded and skipped, and why; filled in while reading.

    ``rows`` counts source records (CSV data rows, JSONL lines or Parquet rows);
    ``orders_seen`` counts source orders (invoices, transactions, a Taobao user's buying days);
    every order seen either became a purchase or is counted in ``dropped_orders`` by reason.
    ``skipped_rows`` counts rows left out by reason; ``cut_orders`` the orders among them cut to
    their first ``line_limit`` items (their other rows are ``over_line_limit``). The event
    counts are of events actually yielded, so they honour ``limit``.
    """

    rows: int = 0
    orders_seen: int = 0
    clicks: int = 0
    purchases: int = 0
    order_lines: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    skipped_rows: Counter[str] = field(default_factory=Counter)
    dropped_orders: Counter[str] = field(default_factory=Counter)
    cut_orders: int = 0
    line_limit: int | None = None

    @property
    def events(self) -> int:
        """Events yielded."""
        return self.clicks + self.purchases

    def count(self, event: Event) -> None:
        """Account for one yielded event."""
        if isinstance(event, PurchaseEvent):
            self.purchases += 1
            self.order_lines += len(event.items)
        else:
            self.clicks += 1
        self.first_ts = event.ts if self.first_ts is None else min(self.first_ts, event.ts)
        self.last_ts = event.ts if self.last_ts is None else max(self.last_ts, event.ts)

    def summary(self) -> str:
        """One human-readable line for a terminal.

        >>> s = ReaderStats(rows=3, clicks=1, purchases=1, order_lines=2)
        >>> s.skipped_rows["cancellation"] += 1
        >>> s.summary()
        '3 rows -> 2 events (1 clicks, 1 purchases, 2 order lines); skipped rows: cancellation 1'
        """
        text = (
            f"{self.rows} rows -> {self.events} events ({self.clicks} clicks, "
            f"{self.purchases} purchases, {self.order_lines} order lines)"
        )
        for title, counts in (
            ("skipped rows", self.skipped_rows),
            ("dropped orders", self.dropped_orders),
        ):
            if counts:
                text += f"; {title}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return text

    def cut_note(self) -> str | None:
        """The orders cut to the wire's line limit, in plain words (None if none were): a
        count of skipped rows alone does not tell a user that whole orders are not whole.

        >>> print(ReaderStats(cut_orders=2, line_limit=200).cut_note())  # doctest: +ELLIPSIS
        2 orders over 200 lines were cut to their first 200: the wire format's limit; ...
        """
        if not self.cut_orders:
            return None
        return (f"{self.cut_orders:,} orders over {self.line_limit} lines were cut to their "
                f"first {self.line_limit}: the wire format's limit; `streamer evaluate` the "
                "original file for whole orders")


def read_events(
    path: PathLike,
    fmt: ReaderFormat,
    *,
    limit: int | None = None,
    stats: ReaderStats | None = None,
    max_order_lines: int | None = MAX_ORDER_LINES,
) -> Iterator[Event]:
    """Yield the events of ``path`` read as ``fmt``, in event-time order (stable for ties).

    ``limit`` keeps the first ``limit`` events in event-time order. ``max_order_lines`` caps
    the distinct items of one order (default: the schema's limit, so every event fits the
    wire; rows of items beyond it are skipped as ``over_line_limit``). ``None`` keeps whole
    orders: for in-process use only (``streamer evaluate``), since such a purchase would not
    pass the wire codec; UCI Online Retail has 236 invoices of more than 200 items (up to
    1,110), and cutting them drops 7% of its anchor occurrences from an evaluation.
    ``stats``, if given, is filled in as the file is read (row and skip counts once the first
    event is yielded, event counts as events are yielded). The format and the file's existence
    are checked at once (``ValueError``, ``FileNotFoundError``); the file is read on the first
    ``next()``, which may raise :class:`InvalidRecord` (``jsonl``, or a CSV without the
    expected columns).

    Rules per format (every skipped row or dropped order is counted by reason in ``stats``):

    ``online-retail`` (UCI): an invoice becomes one ``PurchaseEvent`` with ``event_id``
    ``or-<InvoiceNo>``, ``order_id`` and ``session_id`` the invoice number, ``user_id`` the
    CustomerID (``17850.0`` -> ``17850``) or ``guest-<InvoiceNo>`` when it is empty, and ``ts``
    the invoice's latest ``InvoiceDate`` read as **UK local time** (Europe/London: GMT in
    winter, BST in summer; ``YYYY-MM-DD HH:MM[:SS]`` or the original ``M/D/YYYY H:MM``).
    Rows of the same StockCode are summed into one line whose unit price is the quantity-
    weighted mean (rounded to 4 decimals), so the line's revenue is preserved. Skipped rows:
    ``cancellation`` (InvoiceNo starting with ``C``: a cancellation is not a purchase, and
    crediting it against an earlier invoice is not attempted), ``adjustment`` (InvoiceNo
    starting with ``A``: the bookkeeping entries ``Adjust bad debt`` of StockCode ``B``, one
    of them at a positive price, GBP 11,062.06, that no customer paid), ``non_positive_quantity``,
    ``non_positive_price`` (stock adjustments, free samples), ``out_of_bounds`` (a line over
    the model's quantity or price limits), ``malformed``, and ``over_line_limit`` (rows of
    StockCodes beyond the 200th of an invoice: the first 200 distinct codes in file order are
    kept; see ``max_order_lines``). Non-product codes (``POST``, ``M``, ``DOT``, ...) are kept
    as items: they are in the data. Dropped invoices: ``cancellation``, ``adjustment``,
    ``no_positive_quantity``, ``no_positive_price`` (it had units but none with a price).

    ``taobao``: ``pv`` -> ``view``, ``fav`` -> ``click``, ``cart`` -> ``add_to_cart`` (see
    :data:`TAOBAO_CLICK_KINDS`), with ``event_id`` ``tb-<user>-<item>-<behavior>-<unix_s>``
    (identical rows share an id and count once downstream). One user's ``buy`` rows of one
    China-time day (UTC+8) form one order, ``event_id`` ``tb-<user>-<YYYYMMDD>``, at the time
    of the day's last buy; an item bought n times is one line of quantity n. Sessions are
    user-days: ``session_id`` ``<user>-<YYYYMMDD>`` for the day's clicks and order. There are
    no prices: clicks carry none and order lines cost :data:`UNPRICED_UNIT_PRICE`.

    ``bakery``: one transaction -> one order, ``event_id`` ``bk-<Transaction>``, ``user_id``
    and ``session_id`` ``bk-<Transaction>`` (the data has no customers), ``ts`` the
    transaction's date and time as UK local time; ``NONE`` items are skipped
    (``none_item``), a transaction of only ``NONE`` is dropped (``only_none_items``); repeated
    items add to the line's quantity; unit price :data:`UNPRICED_UNIT_PRICE`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if max_order_lines is not None and max_order_lines < 1:
        raise ValueError(f"max_order_lines must be >= 1, got {max_order_lines}")
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    reader: Reader = partial(_READERS[fmt], max_lines=max_order_lines)
    return _ordered(source, reader, limit, stats if stats is not None else ReaderStats())


def detect_format(path: PathLike) -> ReaderFormat:
    """Guess a file's format from its first bytes (Parquet) or line; ``ValueError`` if it
    matches none."""
    with Path(path).open("rb") as f:
        if f.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC:
            return "parquet"
    with _open_binary(Path(path)) as raw:
        # Only ASCII names tell a format, so bytes of another encoding cannot mislead here
        # (and the reader decides the file's encoding from all of it).
        first = raw.readline().decode("utf-8-sig", errors="replace").strip()
    if first.startswith("{"):
        return "jsonl"
    header = [c.strip() for c in first.split(",")]
    if header[:2] == ["InvoiceNo", "StockCode"]:
        return "online-retail"
    if header[:4] == ["Date", "Time", "Transaction", "Item"] or header[:2] == [
        "Transaction",
        "Item",
    ]:
        return "bakery"
    if len(header) == 5 and header[3] in {"pv", "fav", "cart", "buy"}:
        return "taobao"
    raise ValueError(f"cannot tell the format of {path}; pass it explicitly")


# --- plumbing ------------------------------------------------------------------------------

Reader = Callable[[Path, ReaderStats], list[Event]]
#: Every format's reader also takes ``max_lines`` (keyword): see ``read_events``.


def _ordered(path: Path, reader: Reader, limit: int | None, stats: ReaderStats) -> Iterator[Event]:
    events = reader(path, stats)
    events.sort(key=_event_time)  # list.sort is stable: ties keep file order
    for event in itertools.islice(events, limit):
        stats.count(event)
        yield event


def _event_time(event: Event) -> int:
    return event.ts


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")


def _open_text(path: Path, encoding: str) -> TextIO:
    # newline="" as the csv module requires.
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return path.open(encoding=encoding, newline="")


#: The encodings a CSV file is read in, in turn (see the module's docstring); utf-8-sig drops a
#: spreadsheet's byte-order mark.
_CSV_ENCODINGS = ("utf-8-sig", "cp1252")


def _any_encoding(read: Callable[..., list[Event]]) -> Callable[..., list[Event]]:
    """``read`` (a CSV reader taking ``encoding``) tried in each of :data:`_CSV_ENCODINGS`.

    A file is read again from the start in the next encoding: a file has one encoding, and
    its first byte that is not UTF-8 may come after many rows already read as UTF-8.
    """

    @wraps(read)
    def read_any(path: Path, stats: ReaderStats, *, max_lines: int | None) -> list[Event]:
        for encoding in _CSV_ENCODINGS:
            trial = ReaderStats()
            try:
                events = read(path, trial, max_lines=max_lines, encoding=encoding)
            except UnicodeDecodeError:
                continue
            for name in ReaderStats.__slots__:
                setattr(stats, name, getattr(trial, name))
            return events
        raise _undecodable(path)

    return read_any


def _undecodable(path: Path) -> InvalidRecord:
    """The error naming the first line of ``path`` that no encoding of :data:`_CSV_ENCODINGS`
    reads (Windows-1252 leaves five bytes undefined, and reads every line UTF-8 does)."""
    with _open_binary(path) as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode(_CSV_ENCODINGS[-1])
            except UnicodeDecodeError as e:
                return InvalidRecord(path, number, f"neither UTF-8 nor Windows-1252 text "
                                     f"(byte {line[e.start]:#04x} at column {e.start + 1})")
    return InvalidRecord(path, 1, "neither UTF-8 nor Windows-1252 text")


def _columns(path: Path, header: list[str], wanted: Iterable[str]) -> dict[str, int]:
    index = {name.strip(): i for i, name in enumerate(header)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise InvalidRecord(path, 1, f"header lacks column(s) {', '.join(missing)}")
    return index


def _fits_id(*values: str) -> bool:
    return all(0 < len(v) <= MAX_ID_LEN for v in values)


def _in_time_range(ts_ms: int) -> bool:
    return TS_MIN_MS <= ts_ms <= TS_MAX_MS


@lru_cache(maxsize=65_536)
def _uk_local_ms(text: str) -> int:
    """Epoch ms of a UK wall-clock time (Europe/London, so BST in summer).

    Ambiguous times in the autumn fall-back hour are read as the first (BST) occurrence.

    >>> _uk_local_ms("2010-12-01 08:26:00")  # winter: GMT = UTC
    1291191960000
    >>> _uk_local_ms("2011-06-01 08:26") - _uk_local_ms("2011-06-01 07:26:00+00:00")  # BST
    0
    >>> _uk_local_ms("12/1/2010 8:26") == _uk_local_ms("2010-12-01 08:26")
    True
    """
    try:
        wall = datetime.fromisoformat(text)
    except ValueError:
        wall = datetime.strptime(text, "%m/%d/%Y %H:%M")
    if wall.tzinfo is None:
        wall = wall.replace(tzinfo=_UK)
    return int(wall.timestamp()) * 1000


@lru_cache(maxsize=4096)
def _china_day(unix_seconds: int) -> str:
    """The China-time (UTC+8) calendar day of a Unix time, as ``YYYYMMDD``.

    >>> _china_day(1511971199), _china_day(1511971200)  # 2017-11-29 15:59:59Z / 16:00:00Z
    ('20171129', '20171130')
    """
    return datetime.fromtimestamp(unix_seconds, tz=_CHINA).strftime("%Y%m%d")


@dataclass(slots=True)
class _Basket:
    """Lines of one source order being assembled: item -> [quantity, revenue, rows]."""

    ts: int = 0
    lines: dict[str, list[float]] = field(default_factory=dict)

    def add(self, item_id: str, quantity: int, unit_price: float, ts: int) -> None:
        line = self.lines.setdefault(item_id, [0, 0.0, 0])
        line[0] += quantity
        line[1] += quantity * unit_price
        line[2] += 1
        self.ts = max(self.ts, ts)

    def order_lines(self, stats: ReaderStats, max_lines: int | None) -> list[OrderLine]:
        """The first ``max_lines`` items' lines (all for None); rows of later items are
        counted as skipped."""
        out: list[OrderLine] = []
        cut = False
        for item_id, (quantity, revenue, rows) in self.lines.items():
            if len(out) == max_lines:
                stats.skipped_rows["over_line_limit"] += int(rows)
                cut = True
                continue
            if quantity > MAX_QUANTITY or revenue / quantity > MAX_PRICE:
                stats.skipped_rows["out_of_bounds"] += int(rows)
                continue
            # Weighted mean keeps the line's revenue when one item was entered at two prices.
            unit_price = round(revenue / quantity, 4)
            out.append(OrderLine(item_id=item_id, quantity=int(quantity), unit_price=unit_price))
        if cut:
            stats.cut_orders += 1
            stats.line_limit = max_lines
        return out


# --- jsonl ---------------------------------------------------------------------------------

_CODEC = EventCodec()
_decode_json = internal_decoder(Any)  # a line's shape, to tell purchases from clicks


def _read_jsonl(path: Path, stats: ReaderStats, *, max_lines: int | None) -> list[Event]:
    # Lines are schema events, already within the wire's limit: max_lines does not apply.
    events: list[Event] = []
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            stats.rows += 1
            line = raw.strip()
            if not line:
                stats.skipped_rows["blank_line"] += 1
                continue
            events.append(_decode_line(path, number, line))
    stats.orders_seen = sum(isinstance(e, PurchaseEvent) for e in events)
    return events


def _decode_line(path: Path, number: int, line: bytes, shape: object = None) -> Event:
    """The event of one JSON record (``shape``: the record decoded already, if it is)."""
    if shape is None:
        try:
            shape = _decode_json(line)
        except InvalidEvent as e:  # nesting too deep for the interpreter included
            raise InvalidRecord(path, number, str(e)) from e
    try:
        if isinstance(shape, dict) and "items" in shape:
            return _CODEC.decode_purchase(line)
        if isinstance(shape, dict) and "kind" in shape:
            return _CODEC.decode_click(line)
    except InvalidEvent as e:
        raise InvalidRecord(path, number, str(e)) from e
    raise InvalidRecord(path, number, "neither a purchase (no `items`) nor a click (no `kind`)")


# --- parquet -------------------------------------------------------------------------------


def _read_parquet(path: Path, stats: ReaderStats, *, max_lines: int | None) -> list[Event]:
    # Rows are schema events, as JSONL lines are (validated by the same codec): max_lines does
    # not apply. pyarrow is imported only when a Parquet file is read.
    import pyarrow

    from streamer.replay.parquet import read_rows

    events: list[Event] = []
    try:
        for number, row in read_rows(path):
            stats.rows += 1
            events.append(_decode_line(path, number, msgspec.json.encode(row), shape=row))
    except (pyarrow.ArrowException, OSError) as e:  # not a (readable) Parquet file
        raise InvalidRecord(path, stats.rows + 1, f"not_parquet: {e}") from e
    stats.orders_seen = sum(isinstance(e, PurchaseEvent) for e in events)
    return events


# --- UCI Online Retail ---------------------------------------------------------------------


def _read_online_retail(
    path: Path, stats: ReaderStats, *, max_lines: int | None, encoding: str
) -> list[Event]:
    invoices: dict[str, _Basket] = {}
    cancelled: set[str] = set()
    adjustments: set[str] = set()
    has_units: set[str] = set()  # invoices with a row of positive quantity
    customers: dict[str, str] = {}
    with _open_text(path, encoding) as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None:
            return []
        col = _columns(
            path,
            header,
            ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"),
        )
        i_inv, i_code, i_qty = col["InvoiceNo"], col["StockCode"], col["Quantity"]
        i_date, i_price, i_cust = col["InvoiceDate"], col["UnitPrice"], col["CustomerID"]
        for row in rows:
            stats.rows += 1
            try:
                invoice, code = row[i_inv].strip(), row[i_code].strip()
                if invoice not in invoices:
                    invoices[invoice] = _Basket()
                if invoice.startswith("C"):
                    cancelled.add(invoice)
                    stats.skipped_rows["cancellation"] += 1
                    continue
                if invoice.startswith("A"):
                    adjustments.add(invoice)
                    stats.skipped_rows["adjustment"] += 1
                    continue
                quantity, unit_price = int(row[i_qty]), float(row[i_price])
                ts = _uk_local_ms(row[i_date].strip())
                customer = row[i_cust].strip().removesuffix(".0")
            except (ValueError, IndexError):
                stats.skipped_rows["malformed"] += 1
                continue
            if quantity <= 0:
                stats.skipped_rows["non_positive_quantity"] += 1
                continue
            has_units.add(invoice)
            if not unit_price > 0:  # also NaN
                stats.skipped_rows["non_positive_price"] += 1
                continue
            user = customer or f"guest-{invoice}"
            if not (
                _fits_id(f"or-{invoice}", code, user)
                and _in_time_range(ts)
                and unit_price <= MAX_PRICE
            ):
                stats.skipped_rows["out_of_bounds"] += 1
                continue
            customers[invoice] = user
            invoices[invoice].add(code, quantity, unit_price, ts)
    stats.orders_seen = len(invoices)
    events: list[Event] = []
    for invoice, basket in invoices.items():
        lines = basket.order_lines(stats, max_lines)
        if not lines:
            reason = (
                "cancellation"
                if invoice in cancelled
                else "adjustment"
                if invoice in adjustments
                else "no_positive_price"
                if invoice in has_units
                else "no_positive_quantity"
            )
            stats.dropped_orders[reason] += 1
            continue
        events.append(
            PurchaseEvent(
                event_id=f"or-{invoice}",
                ts=basket.ts,
                user_id=customers[invoice],
                session_id=invoice,
                order_id=invoice,
                items=lines,
            )
        )
    return events


# --- Taobao UserBehavior -------------------------------------------------------------------


def _read_taobao(
    path: Path, stats: ReaderStats, *, max_lines: int | None, encoding: str
) -> list[Event]:
    events: list[Event] = []
    days: dict[tuple[str, str], _Basket] = {}
    with _open_text(path, encoding) as f:
        for row in csv.reader(f):
            stats.rows += 1
            try:
                user, item, _category, behavior, seconds_text = (c.strip() for c in row)
                seconds = int(seconds_text)
            except ValueError:  # wrong field count or a non-integer time
                stats.skipped_rows["malformed"] += 1
                continue
            ts = seconds * 1000
            event_id = f"tb-{user}-{item}-{behavior}-{seconds}"
            if not (_fits_id(event_id) and _in_time_range(ts)):
                stats.skipped_rows["out_of_bounds"] += 1
                continue
            day = _china_day(seconds)
            if behavior == "buy":
                days.setdefault((user, day), _Basket()).add(item, 1, UNPRICED_UNIT_PRICE, ts)
                continue
            kind = TAOBAO_CLICK_KINDS.get(behavior)
            if kind is None:
                stats.skipped_rows["unknown_behavior"] += 1
                continue
            events.append(
                ClickEvent(
                    event_id=event_id,
                    ts=ts,
                    user_id=user,
                    session_id=f"{user}-{day}",
                    item_id=item,
                    kind=kind,
                )
            )
    stats.orders_seen = len(days)
    for (user, day), basket in days.items():
        lines = basket.order_lines(stats, max_lines)
        if not lines:
            stats.dropped_orders["no_valid_line"] += 1
            continue
        events.append(
            PurchaseEvent(
                event_id=f"tb-{user}-{day}",
                ts=basket.ts,
                user_id=user,
                session_id=f"{user}-{day}",
                order_id=f"{user}-{day}",
                items=lines,
            )
        )
    return events


# --- bakery --------------------------------------------------------------------------------


def _read_bakery(
    path: Path, stats: ReaderStats, *, max_lines: int | None, encoding: str
) -> list[Event]:
    baskets: dict[str, _Basket] = {}
    with _open_text(path, encoding) as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None:
            return []
        col = _columns(path, header, ("Transaction", "Item"))
        # BreadBasket_DMS.csv has Date and Time; its re-upload has date_time "dd-mm-YYYY HH:MM".
        if "date_time" not in col:
            _columns(path, header, ("Date", "Time"))
        for row in rows:
            stats.rows += 1
            try:
                txn, item = row[col["Transaction"]].strip(), row[col["Item"]].strip()
                if "date_time" in col:
                    wall = datetime.strptime(row[col["date_time"]].strip(), "%d-%m-%Y %H:%M")
                    ts = _uk_local_ms(wall.isoformat())
                else:
                    ts = _uk_local_ms(f"{row[col['Date']].strip()} {row[col['Time']].strip()}")
            except (ValueError, IndexError):
                stats.skipped_rows["malformed"] += 1
                continue
            basket = baskets.setdefault(txn, _Basket())
            if item.upper() == "NONE":
                stats.skipped_rows["none_item"] += 1
                continue
            if not (_fits_id(f"bk-{txn}", item) and _in_time_range(ts)):
                stats.skipped_rows["out_of_bounds"] += 1
                continue
            basket.add(item, 1, UNPRICED_UNIT_PRICE, ts)
    stats.orders_seen = len(baskets)
    events: list[Event] = []
    for txn, basket in baskets.items():
        lines = basket.order_lines(stats, max_lines)
        if not lines:
            stats.dropped_orders["only_none_items" if not basket.lines else "no_valid_line"] += 1
            continue
        events.append(
            PurchaseEvent(
                event_id=f"bk-{txn}",
                ts=basket.ts,
                user_id=f"bk-{txn}",
                session_id=f"bk-{txn}",
                order_id=txn,
                items=lines,
            )
        )
    return events


_READERS: dict[ReaderFormat, Callable[..., list[Event]]] = {
    "jsonl": _read_jsonl,
    "online-retail": _any_encoding(_read_online_retail),
    "taobao": _any_encoding(_read_taobao),
    "bakery": _any_encoding(_read_bakery),
    "parquet": _read_parquet,
}

__all__ = [
    "FORMATS",
    "TAOBAO_CLICK_KINDS",
    "UNPRICED_UNIT_PRICE",
    "InvalidRecord",
    "ReaderFormat",
    "ReaderStats",
    "detect_format",
    "read_events",
]
