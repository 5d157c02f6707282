"""Historical data: readers for public datasets and schema JSONL, and conversion between them.

Pure Python: reads files and yields wire events from :mod:`streamer.events`; producing them to
Kafka happens elsewhere.
"""

from streamer.replay.convert import convert
from streamer.replay.readers import (
    FORMATS,
    TAOBAO_CLICK_KINDS,
    UNPRICED_UNIT_PRICE,
    InvalidRecord,
    ReaderFormat,
    ReaderStats,
    detect_format,
    read_events,
)

__all__ = [
    "FORMATS",
    "TAOBAO_CLICK_KINDS",
    "UNPRICED_UNIT_PRICE",
    "InvalidRecord",
    "ReaderFormat",
    "ReaderStats",
    "convert",
    "detect_format",
    "read_events",
]
