"""Conversion of any supported historical format to schema JSONL, the universal format (or
to the same events as Parquet).

>>> import tempfile, pathlib
>>> tmp = tempfile.TemporaryDirectory()
>>> src, out = pathlib.Path(tmp.name, "b.csv"), pathlib.Path(tmp.name, "b.jsonl")
>>> _ = src.write_text("Date,Time,Transaction,Item\\n2016-10-30,09:58:11,1,Bread\\n")
>>> convert(src, "bakery", out).purchases
1
>>> out.read_text()  # doctest: +NORMALIZE_WHITESPACE
'{"event_id":"bk-1","ts":1477821491000,"user_id":"bk-1","session_id":"bk-1","order_id":"1",\
"items":[{"item_id":"Bread","quantity":1,"unit_price":1.0}]}\\n'
>>> [e.event_id for e in read_events(out, "jsonl")]
['bk-1']
>>> tmp.cleanup()
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from pathlib import Path

from streamer.events import EventCodec
from streamer.replay.readers import Event, PathLike, ReaderFormat, ReaderStats, read_events

__all__ = ["OUTPUT_SUFFIXES", "NoEvents", "convert"]

#: What ``convert`` can write, by the output's name: schema JSONL (gzipped or not), Parquet.
OUTPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


class NoEvents(ValueError):
    """Every row of the input was skipped (often the wrong format); ``stats`` says what was
    read and why it was skipped."""

    def __init__(self, path: Path, stats: ReaderStats) -> None:
        super().__init__(f"{path}: no events ({stats.summary()})")
        self.stats = stats


def convert(
    path: PathLike, fmt: ReaderFormat, out_path: PathLike, *, limit: int | None = None
) -> ReaderStats:
    """Write the events of ``path`` (read as ``fmt``) to ``out_path`` as schema JSONL, or as
    Parquet when ``out_path`` ends in ``.parquet``.

    One compact JSON event per line, in event-time order, unset optional fields omitted;
    ``read_events(out_path, "jsonl")`` gives the same events back. An ``out_path`` ending in
    ``.gz`` is gzip-compressed. Parquet: one row per event (:mod:`streamer.replay.parquet`),
    ``read_events(out_path, "parquet")`` gives the same events back. The output appears
    atomically: it is written to a temporary sibling and renamed, so a failed conversion
    (``InvalidRecord``, ``OSError``) leaves no partial file and an existing ``out_path``
    untouched. Refuses (``ValueError``) to overwrite its own input. An input whose rows all
    were skipped (unless ``limit`` is 0) raises :class:`NoEvents` and writes nothing: an empty
    output would pass for a conversion (an input without rows gives an empty output). Returns
    what was read, written and skipped.
    """
    source, target = Path(path), Path(out_path)
    if target.exists() and target.resolve() == source.resolve():
        raise ValueError(f"refusing to overwrite the input file {source}")
    stats = ReaderStats()
    events = read_events(source, fmt, limit=limit, stats=stats)
    partial = target.with_name(f".{target.name}.partial")
    try:
        if target.suffix == ".parquet":
            from streamer.replay.parquet import write_events

            write_events(events, partial)
        else:
            _write_jsonl(events, partial, compress=target.suffix == ".gz")
        if stats.rows > 0 and stats.events == 0 and limit != 0:
            raise NoEvents(source, stats)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return stats


def _write_jsonl(events: Iterable[Event], path: Path, *, compress: bool) -> None:
    encode = EventCodec().encode
    with path.open("wb") as raw:
        # No name and mtime 0 in the gzip header: the same conversion gives the same bytes.
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if compress else raw
        for event in events:
            out.write(encode(event))
            out.write(b"\n")
        out.close()  # for gzip, writes the trailer; raw is closed by the with block
