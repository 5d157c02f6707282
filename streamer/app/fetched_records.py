"""aiokafka's iteration over fetched record batches, made to survive the batches it cannot parse.

Written against aiokafka 0.14.0; :func:`install_fetched_records` refuses any other release.

Every aiokafka consumer in the project (faust's, through :mod:`streamer.app.fast_consumer`;
:class:`~streamer.app.offer_index.OfferIndexFeed`, the policy follower, the trainer, the reward
readers, the storefront) iterates a fetched partition's batches in
``aiokafka.consumer.fetcher.PartitionRecords._unpack_records``. An exception raised there comes
out of ``getmany``, and the fetch position stays before the batch: the consumer dies, and after
a restart meets the same batch again, a crash loop on one record. Two ways that happens:

- **A header key that is not UTF-8.** Kafka header keys are bytes on the wire; Java and
  librdkafka producers can write any, and the Java client reads them leniently (U+FFFD for
  bad bytes). aiokafka's C parser decodes them strictly and raises ``UnicodeDecodeError`` from
  the batch's ``__next__``. Here such a batch is parsed again, from its own bytes, with
  aiokafka's pure-Python parser (``_DefaultRecordBatchPy``) decoding header keys as the Java
  client does (:class:`LenientRecordBatch`): every record of the batch is delivered, in order,
  once (records before the bad one were delivered already and are skipped, by offset, as the
  stock loop skips those below ``next_fetch_offset`` after a refetch mid-batch).
- **A batch that cannot be parsed at all**: a CRC mismatch (``CorruptRecordException``), a
  codec the process lacks (``UnsupportedCodecError``), a malformed record, or the lenient
  parse failing too. The same bytes fail the same way on every refetch, so the batch's
  remaining offsets are skipped: logged as an error with topic, partition and offsets by every
  consumer, and reported as a :class:`SkippedBatch` marker record to the consumers that asked
  for it (:func:`report_skipped_batches`; the worker's faust consumer does, and dead-letters
  it: :meth:`streamer.app.fast_consumer.FastConsumer._skip_batch`).

Why here, and a marker: only this loop knows where a batch starts and ends and what it failed
on; above it, ``getmany`` returns records or raises, and an exception loses the records
fetched with it. A marker record in the fetched records keeps the skip in order with them, so
the faust consumer can count the offsets as done for its commit exactly where they fall. Only
consumers that asked see markers: a plain aiokafka consumer would take one for a record (a
null value) and the project's plain readers have no dead-letter topic; they log and skip.

**The bytes.** The C ``MemoryRecords`` and its batches do not expose the bytes they parse. The
fetcher creates one ``MemoryRecords`` per partition of a fetch response; it is replaced by
:class:`FetchedRecords`, the same class keeping a reference to the response's bytes: one
Python call per fetched partition, nothing per batch or record. A failing batch's bytes are
found in them by its base offset (batch headers are walked only then).

Copied from aiokafka 0.14.0: :meth:`LenientPartitionRecords._unpack_records` is
``aiokafka/consumer/fetcher.py`` ``PartitionRecords._unpack_records``, with the batch's
iteration in a ``try`` (fallback and skip) and the loop's batch parsing moved into it;
:meth:`LenientRecordBatch._read_msg` is ``aiokafka/record/default_records.py``
``_DefaultRecordBatchPy._read_msg`` with ``decode("utf-8", "replace")`` for header keys.
:func:`check_supported` compares both originals' sources with the ones copied (sha256), so an
upgrade of aiokafka fails at start-up, not silently.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiokafka
import aiokafka.errors as Errors
from aiokafka.consumer import fetcher
from aiokafka.record import default_records, memory_records
from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.util import decode_varint
from aiokafka.structs import ConsumerRecord

__all__ = ["AIOKAFKA_VERSION", "FetchedRecords", "FetchedRecordsUnsupported",
           "LenientPartitionRecords", "LenientRecordBatch", "SkippedBatch", "check_supported",
           "install_fetched_records", "report_skipped_batches"]

log = logging.getLogger(__name__)

#: The aiokafka release whose sources the copies here were taken from.
AIOKAFKA_VERSION = "0.14.0"

#: sha256 of ``inspect.getsource`` of the originals in aiokafka 0.14.0.
UNPACK_RECORDS_SHA256 = "b803e6d46480732c7a7faa8e784b338bcdd4e707ea67fba96c013654b04b8a08"
READ_MSG_SHA256 = "0997ab7a58505c939c31b1cf5809aff4ac6de70f713794d3c62bd049a3270a4a"

_BATCH_HEAD = struct.Struct(">qi")  # BaseOffset, Length: the same in every message format

#: aiokafka's own classes, as imported (install replaces the fetcher's names).
_STOCK_PARTITION_RECORDS = fetcher.PartitionRecords
_STOCK_MEMORY_RECORDS = fetcher.MemoryRecords


class FetchedRecordsUnsupported(RuntimeError):
    """aiokafka's internals are not the ones this module's copies were taken from."""


@dataclass(frozen=True, slots=True)
class SkippedBatch:
    """A fetched batch whose offsets ``first_offset``..``last_offset`` of ``topic[partition]``
    were skipped because it could not be parsed (``error``); ``data`` is the batch's bytes as
    fetched (empty when they could not be found)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    error: str
    data: bytes


_reporting = threading.local()


def report_skipped_batches() -> None:
    """Have the consumers iterating fetched batches in this thread receive a marker record for
    each batch they skip: a ``ConsumerRecord`` at the batch's last offset, with a null key and
    value and a :class:`SkippedBatch` as its ``headers``. Call it in the consumer's thread
    (faust runs its consumer in a thread of its own). Other consumers only log the skip."""
    _reporting.markers = True


class LenientRecordBatch(_DefaultRecordBatchPy):  # type: ignore[misc]
    """aiokafka's pure-Python v2 batch parser, reading header keys as the Java client does:
    bytes that are not UTF-8 become U+FFFD, where aiokafka raises.

    >>> from aiokafka.record.default_records import DefaultRecordBatchBuilder
    >>> builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    >>> _ = builder.append(0, timestamp=1, key=None, value=b"v", headers=[("ZZ", b"h")])
    >>> data = bytes(builder.build()).replace(b"ZZ", b"\\xffZ")
    >>> [record.headers for record in LenientRecordBatch(data)]
    [[('\\ufffdZ', b'h')]]
    """

    _buffer: bytearray  # set by aiokafka's __init__, replaced when it decompresses
    _pos: int

    # Copied from aiokafka 0.14.0 aiokafka/record/default_records.py,
    # _DefaultRecordBatchPy._read_msg; the change: the header key's decode("utf-8", "replace").
    def _read_msg(
        self, decode_varint: Callable[[bytearray, int], tuple[int, int]] = decode_varint
    ) -> _DefaultRecordPy:
        buffer = self._buffer
        pos = self._pos
        length, pos = decode_varint(buffer, pos)
        start_pos = pos
        _, pos = decode_varint(buffer, pos)  # attrs can be skipped for now

        ts_delta, pos = decode_varint(buffer, pos)
        if self.timestamp_type == self.LOG_APPEND_TIME:
            timestamp = self.max_timestamp
        else:
            timestamp = self.first_timestamp + ts_delta

        offset_delta, pos = decode_varint(buffer, pos)
        offset = self.base_offset + offset_delta

        key_len, pos = decode_varint(buffer, pos)
        if key_len >= 0:
            key = bytes(buffer[pos : pos + key_len])
            pos += key_len
        else:
            key = None

        value_len, pos = decode_varint(buffer, pos)
        if value_len >= 0:
            value = bytes(buffer[pos : pos + value_len])
            pos += value_len
        else:
            value = None

        header_count, pos = decode_varint(buffer, pos)
        if header_count < 0:
            raise Errors.CorruptRecordException(
                f"Found invalid number of record headers {header_count}"
            )
        headers: list[tuple[str, bytes | None]] = []
        while header_count:
            # Header key is of type String, that can't be None
            h_key_len, pos = decode_varint(buffer, pos)
            if h_key_len < 0:
                raise Errors.CorruptRecordException(
                    f"Invalid negative header key size {h_key_len}"
                )
            h_key = buffer[pos : pos + h_key_len].decode("utf-8", "replace")
            pos += h_key_len

            # Value is of type NULLABLE_BYTES, so it can be None
            h_value_len, pos = decode_varint(buffer, pos)
            if h_value_len >= 0:
                h_value = bytes(buffer[pos : pos + h_value_len])
                pos += h_value_len
            else:
                h_value = None

            headers.append((h_key, h_value))
            header_count -= 1

        # validate whether we have read all header bytes in the current record
        if pos - start_pos != length:
            raise Errors.CorruptRecordException(
                f"Invalid record size: expected to read {length} bytes in record "
                f"payload, but instead read {pos - start_pos}"
            )
        self._pos = pos

        return _DefaultRecordPy(
            offset, timestamp, self.timestamp_type, key, value, headers
        )


class FetchedRecords(_STOCK_MEMORY_RECORDS):  # type: ignore[misc, valid-type]
    """aiokafka's ``MemoryRecords`` (C or Python) keeping the bytes it parses as ``data``."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data




def batch_bytes(data: bytes | memoryview, base_offset: int) -> bytes:
    """The bytes of the batch starting at ``base_offset`` among the batches ``data`` holds
    (a fetch response's records of one partition; offsets increase from batch to batch).

    Raises ``LookupError`` when no whole batch starts there.
    """
    pos, size = 0, len(data)
    while pos + _BATCH_HEAD.size <= size:
        offset, length = _BATCH_HEAD.unpack_from(data, pos)
        end = pos + _BATCH_HEAD.size + length
        if offset == base_offset and end <= size:
            return bytes(data[pos:end])
        if offset >= base_offset or length < 0:
            break
        pos = end
    raise LookupError(f"no batch at offset {base_offset} in the fetched records")


class LenientPartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's ``PartitionRecords`` reading batches whose header keys are not UTF-8, and
    skipping batches that cannot be parsed instead of raising (see the module doc)."""

    # Copied from aiokafka 0.14.0 aiokafka/consumer/fetcher.py,
    # PartitionRecords._unpack_records; the changes: a batch's CRC check, transaction markers
    # and iteration run in a ``try``: a UnicodeDecodeError reads the rest of the batch with
    # the lenient parser (_lenient_records), any other exception skips the batch's remaining
    # offsets (_skip). A deserializer's error (aiokafka calls them in _consumer_record) skips
    # the rest of its batch too: it would recur on every refetch as well.
    def _unpack_records(self) -> Iterator[Any]:
        # NOTE: if the batch is not compressed it's equal to 1 record in
        #       v0 and v1.
        tp = self._tp
        records = self._records
        while records.has_next():
            next_batch = records.next_batch()
            try:
                if self._check_crcs and not next_batch.validate_crc():
                    # This iterator will be closed after the exception, so we don't
                    # try to drain other batches here. They will be refetched.
                    raise Errors.CorruptRecordException(f"Invalid CRC - {tp}")

                if (
                    self._isolation_level == fetcher.READ_COMMITTED
                    and next_batch.producer_id is not None
                ):
                    self._consume_aborted_up_to(next_batch.base_offset)

                    if (
                        next_batch.is_control_batch
                        and self._contains_abort_marker(next_batch)
                    ):  # fmt: skip
                        # Using `discard` instead of `remove`, because Kafka
                        # may return an abort marker for an otherwise empty
                        # topic-partition.
                        self._aborted_producers.discard(next_batch.producer_id)

                    if (
                        next_batch.is_transactional
                        and next_batch.producer_id in self._aborted_producers
                    ):
                        fetcher.log.debug(
                            "Skipping aborted record batch from partition %s with"
                            " producer_id %s and offsets %s to %s",
                            tp,
                            next_batch.producer_id,
                            next_batch.base_offset,
                            next_batch.next_offset - 1,
                        )
                        self.next_fetch_offset = next_batch.next_offset
                        continue

                # We skip control batches no matter the isolation level
                if next_batch.is_control_batch:
                    self.next_fetch_offset = next_batch.next_offset
                    continue

                try:
                    for record in next_batch:
                        # It's OK for the offset to be larger than the current
                        # partition. It will happen in compacted topics.
                        if record.offset < self.next_fetch_offset:
                            # Probably just a compressed messageset, it's ok to skip.
                            continue
                        consumer_record = self._consumer_record(tp, record)
                        self.next_fetch_offset = record.offset + 1
                        yield consumer_record
                except UnicodeDecodeError:  # a header key (the C parser): read it leniently
                    yield from self._lenient_records(next_batch)
            except Exception as e:
                if not hasattr(next_batch, "base_offset"):
                    raise  # a legacy (v0/v1) batch: no offsets to skip to, as aiokafka did
                marker = self._skip(next_batch, e)
                # Past the batch before the marker is yielded, as the stock loop moves before
                # each record: a FetchResult that stops at the marker (getall's max_records)
                # keeps its position there, and a refetch would report the batch again.
                self.next_fetch_offset = next_batch.next_offset
                if marker is not None:
                    yield marker

            # Message format v2 preserves the last offset in a batch even if
            # the last record is removed through compaction. By using the next
            # offset computed from the last offset in the batch, we ensure that
            # the offset of the next fetch will point to the next batch, which
            # avoids unnecessary re-fetching of the same batch (in the worst
            # case, the consumer could get stuck fetching the same batch
            # repeatedly).
            self.next_fetch_offset = next_batch.next_offset

    def _fetched_bytes(self) -> bytes | memoryview | None:
        """The fetch response's bytes this partition's batches come from (None: records not
        created by the fetcher, e.g. a test's)."""
        records = self._records
        return getattr(records, "data", None) or getattr(records, "_buffer", None)

    def _lenient_records(self, batch: Any) -> Iterator[Any]:
        """The records of ``batch`` from ``next_fetch_offset`` on, parsed again from its bytes
        with header keys decoded leniently. Raises what the parse raises (the batch is then
        skipped) and ``LookupError`` when its bytes are not at hand."""
        data = self._fetched_bytes()
        if data is None:
            raise LookupError("the batch's bytes were not kept (records not fetched here)")
        log.warning("%s[%d]: a record batch at offset %d has a header key that is not UTF-8; "
                    "reading it with such keys decoded leniently (U+FFFD)", self._tp.topic,
                    self._tp.partition, batch.base_offset)
        tp = self._tp
        for record in LenientRecordBatch(batch_bytes(data, batch.base_offset)):
            if record.offset < self.next_fetch_offset:
                continue  # delivered before the strict parser failed
            consumer_record = self._consumer_record(tp, record)
            self.next_fetch_offset = record.offset + 1
            yield consumer_record

    def _skip(self, batch: Any, error: BaseException) -> Any:
        """Log that ``batch``'s offsets from ``next_fetch_offset`` on are skipped for ``error``;
        the marker record to yield for it when this thread asked (report_skipped_batches)."""
        tp = self._tp
        first = max(batch.base_offset, self.next_fetch_offset)
        last = batch.next_offset - 1
        reason = f"{type(error).__name__}: {error}"
        if last < first:  # every record was read, then the batch's end did not parse
            log.error("%s[%d]: the record batch at offset %d ends unreadably, after its last "
                      "record (%s)", tp.topic, tp.partition, batch.base_offset, reason)
            return None
        log.error("%s[%d]: skipped offsets %d..%d, a record batch that cannot be read (%s)",
                  tp.topic, tp.partition, first, last, reason)
        if not getattr(_reporting, "markers", False):
            return None
        data = self._fetched_bytes()
        try:
            raw = batch_bytes(data, batch.base_offset) if data is not None else b""
        except LookupError:
            raw = b""
        skipped = SkippedBatch(tp.topic, tp.partition, first, last, reason, raw)
        return ConsumerRecord(tp.topic, tp.partition, last, batch.max_timestamp,
                              batch.timestamp_type, None, None, None, -1, -1, skipped)


def _source_sha256(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def check_supported() -> None:
    """Raise :class:`FetchedRecordsUnsupported` unless the installed aiokafka is the release
    this module's copies were taken from, with the same sources."""
    problems = []
    if aiokafka.__version__ != AIOKAFKA_VERSION:
        problems.append(f"aiokafka {aiokafka.__version__} is installed")
    for name, function, expected in (
            ("PartitionRecords._unpack_records", _STOCK_PARTITION_RECORDS._unpack_records,
             UNPACK_RECORDS_SHA256),
            ("_DefaultRecordBatchPy._read_msg", default_records._DefaultRecordBatchPy._read_msg,
             READ_MSG_SHA256)):
        try:
            digest = _source_sha256(function)
        except (OSError, TypeError) as e:  # no source: cannot compare, refuse
            problems.append(f"cannot read aiokafka's {name} source ({e})")
        else:
            if digest != expected:
                problems.append(f"aiokafka's {name} changed (sha256 {digest[:12]}..., "
                                f"expected {expected[:12]}...)")
    if _STOCK_MEMORY_RECORDS is not memory_records.MemoryRecords:
        problems.append("aiokafka.consumer.fetcher.MemoryRecords is not aiokafka's")
    for name in ("_consumer_record", "_consume_aborted_up_to", "_contains_abort_marker"):
        if not callable(getattr(_STOCK_PARTITION_RECORDS, name, None)):
            problems.append(f"aiokafka's PartitionRecords has no {name}()")
    if problems:
        raise FetchedRecordsUnsupported(
            f"streamer.app.fetched_records was written against aiokafka {AIOKAFKA_VERSION}: "
            + "; ".join(problems) + ". Re-check it against the new aiokafka.")


def install_fetched_records() -> None:
    """Make every aiokafka consumer of this process read fetched batches with
    :class:`LenientPartitionRecords` (and :class:`FetchedRecords`). Idempotent; raises
    :class:`FetchedRecordsUnsupported` when aiokafka is not the release it was written
    against. Consumers created before the call get it too: the fetcher looks both names up
    each time it parses a response."""
    if fetcher.PartitionRecords is LenientPartitionRecords:
        return
    check_supported()
    fetcher.MemoryRecords = FetchedRecords
    fetcher.PartitionRecords = LenientPartitionRecords
