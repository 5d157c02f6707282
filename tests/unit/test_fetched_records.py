"""streamer.app.fetched_records: batches aiokafka's C parser refuses for a header key that is not
UTF-8 are read leniently, batches nobody can parse are skipped, and the install checks."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
from typing import Any

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from streamer.app import fetched_records
from streamer.app.fetched_records import (
    FetchedRecords,
    FetchedRecordsUnsupported,
    LenientPartitionRecords,
    SkippedBatch,
    check_supported,
    install_fetched_records,
    report_skipped_batches,
)

TP = TopicPartition("clicks", 0)
GZIP = 1
CRC_AT = struct.calcsize(">qiib")  # where a v2 batch's CRC sits; it covers what follows it
ATTRIBUTES_AT = CRC_AT + 4


def batch(base: int, n: int = 3, *, compression: int = 0, bad_key_at: int | None = None,
          bad_crc: bool = False, codec: int | None = None) -> bytes:
    """A v2 batch of ``n`` records at offsets ``base``.., each with a header ``ZZ``; the one
    at ``bad_key_at`` with ``\\xff\\xfe`` as its header key (CRC recomputed, as a producer
    writing such keys would have it). ``codec`` rewrites the attributes' codec bits."""
    builder = DefaultRecordBatchBuilder(2, compression, False, -1, -1, -1, 1 << 20)
    for i in range(n):
        key = "XX" if i == bad_key_at else "ZZ"
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"s%d" % i,
                       value=b"v%d" % (base + i), headers=[(key, b"h")])
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base)
    if compression:  # the header key is inside the compressed payload: recompress by hand
        assert bad_key_at is None
    elif bad_key_at is not None:
        i = raw.index(b"XX")
        raw[i:i + 2] = b"\xff\xfe"
    if codec is not None:
        struct.pack_into(">h", raw, ATTRIBUTES_AT, codec)
    crc = calc_crc32c(bytes(raw[ATTRIBUTES_AT:]))
    struct.pack_into(">I", raw, CRC_AT, crc ^ 1 if bad_crc else crc)
    return bytes(raw)


def gzip_batch_with_bad_key(base: int) -> bytes:
    """A gzip batch of three records, the middle one's header key ``\\xff\\xfe``: built
    uncompressed, its records section then gzipped as the builder would."""
    import gzip

    plain = bytearray(batch(base, bad_key_at=1))
    head = fetched_records.default_records.DefaultRecordBase.HEADER_STRUCT.size
    payload = gzip.compress(bytes(plain[head:]))
    raw = plain[:head] + payload
    struct.pack_into(">i", raw, 8, len(raw) - 12)
    struct.pack_into(">h", raw, ATTRIBUTES_AT, GZIP)
    struct.pack_into(">I", raw, CRC_AT, calc_crc32c(bytes(raw[ATTRIBUTES_AT:])))
    return bytes(raw)


def read(data: bytes, *, fetch_offset: int = 0, records_class: Any = None,
         cls: Any = LenientPartitionRecords) -> list[Any]:
    records = (records_class or FetchedRecords)(data)
    return list(cls(TP, records, [], fetch_offset, None, None, True, 0))


def summary(records: list[Any]) -> list[tuple[int, bytes | None, Any]]:
    return [(r.offset, r.value, r.headers) for r in records]


@pytest.mark.parametrize("make", [lambda: batch(10, bad_key_at=1),
                                  lambda: gzip_batch_with_bad_key(10)],
                         ids=["uncompressed", "gzip"])
def test_a_header_key_that_is_not_utf8_is_read_as_the_java_client_reads_it(make: Any) -> None:
    data = batch(0) + make() + batch(20)
    with pytest.raises(UnicodeDecodeError):  # what aiokafka does: the consumer dies
        read(data, cls=fetched_records._STOCK_PARTITION_RECORDS, records_class=MemoryRecords)
    records = read(data)
    assert [r.offset for r in records] == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert summary(records)[3:6] == [(10, b"v10", (("ZZ", b"h"),)),
                                     (11, b"v11", (("\ufffd\ufffd", b"h"),)),
                                     (12, b"v12", (("ZZ", b"h"),))]
    assert [r.key for r in records[3:6]] == [b"s0", b"s1", b"s2"]
    assert [r.timestamp for r in records[3:6]] == [1_700_000_000_000 + i for i in range(3)]


def test_a_refetch_from_mid_batch_delivers_each_record_once() -> None:
    records = read(batch(10, bad_key_at=1), fetch_offset=12)
    assert [r.offset for r in records] == [12]


def test_records_that_are_not_the_fetchers_fall_back_to_their_python_buffer() -> None:
    records = read(batch(10, bad_key_at=1),
                   records_class=fetched_records.memory_records._MemoryRecordsPy)
    assert [r.offset for r in records] == [10, 11, 12]


BROKEN = {
    "crc": lambda: batch(10, bad_crc=True),
    "codec": lambda: batch(10, codec=7),  # a codec number no client knows
    "bad key, then corrupt": lambda: corrupt_last_record(batch(10, bad_key_at=1)),
}


def corrupt_last_record(data: bytes) -> bytes:
    """``data`` with its last record's value length one too long (the CRC recomputed): the
    record no longer parses, with either parser."""
    raw = bytearray(data)
    i = raw.index(b"v12")
    raw[i - 1] += 2  # a zigzag varint: length 3 -> 4
    struct.pack_into(">I", raw, CRC_AT, calc_crc32c(bytes(raw[ATTRIBUTES_AT:])))
    return bytes(raw)


@pytest.mark.parametrize("name", BROKEN)
def test_a_batch_that_cannot_be_parsed_is_skipped_and_logged(
        name: str, caplog: pytest.LogCaptureFixture) -> None:
    data = batch(0) + BROKEN[name]() + batch(20)
    records = read(data)
    expected = [0, 1, 2, 10, 11, 20, 21, 22] if name == "bad key, then corrupt" else [
        0, 1, 2, 20, 21, 22]
    assert [r.offset for r in records] == expected
    first = 12 if name == "bad key, then corrupt" else 10  # 10 and 11 were read
    assert f"clicks[0]: skipped offsets {first}..12" in caplog.text


def test_a_skipped_batch_is_reported_as_a_marker_to_threads_that_asked() -> None:
    broken = BROKEN["crc"]()
    data = batch(0) + broken + batch(20)
    found: list[Any] = []

    def in_thread() -> None:
        report_skipped_batches()
        found.extend(read(data))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert [r.offset for r in found] == [0, 1, 2, 12, 20, 21, 22]
    marker = found[3]
    assert (marker.key, marker.value) == (None, None)
    assert marker.headers == SkippedBatch("clicks", 0, 10, 12,
                                          "CorruptRecordException: [Error 2] "
                                          "CorruptRecordException: Invalid CRC - "
                                          "TopicPartition(topic='clicks', partition=0)",
                                          broken)
    assert [r.offset for r in read(data)] == [0, 1, 2, 20, 21, 22]  # this thread did not ask


def test_a_fetch_result_stopping_at_a_marker_has_moved_past_its_batch() -> None:
    """aiokafka's FetchResult.getall(max_records) takes the position from the records after
    the last one it returns: a marker returned last must leave it past the skipped batch, or
    a refetch (a partition paused, a seek) reports the batch again."""
    from types import SimpleNamespace

    state = SimpleNamespace(paused=False, position=0)
    state.consumed_to = lambda position: setattr(state, "position", position)
    assignment = SimpleNamespace(active=True, state_value=lambda tp: state)
    data = batch(0, 2) + BROKEN["crc"]() + batch(20, 2)
    found: list[Any] = []

    def in_thread() -> None:
        report_skipped_batches()
        records = LenientPartitionRecords(TP, FetchedRecords(data), [], 0, None, None, True, 0)
        result = fetcher.FetchResult(TP, assignment=assignment, partition_records=records,
                                     backoff=0)
        found.extend(result.getall(max_records=3))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert [r.offset for r in found] == [0, 1, 12] and found[2].value is None
    assert state.position == 13


def test_a_batch_failing_mid_way_skips_only_what_was_not_delivered() -> None:
    # Record 1's header key is bad and record 2 corrupt: the strict parser delivers record 0,
    # the lenient one record 1, and fails on record 2, the one offset skipped.
    found: list[Any] = []

    def in_thread() -> None:
        report_skipped_batches()
        found.extend(read(BROKEN["bad key, then corrupt"]()))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert [r.offset for r in found] == [10, 11, 12]
    assert (found[1].value, found[2].value) == (b"v11", None)
    skipped = found[2].headers
    assert (skipped.first_offset, skipped.last_offset) == (12, 12)
    assert skipped.error.startswith("CorruptRecordException")


def test_install_replaces_the_fetchers_classes_once() -> None:
    install_fetched_records()
    assert fetcher.PartitionRecords is LenientPartitionRecords
    assert fetcher.MemoryRecords is FetchedRecords
    install_fetched_records()  # idempotent
    assert fetcher.PartitionRecords is LenientPartitionRecords


def test_install_refuses_another_aiokafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetched_records.aiokafka, "__version__", "0.15.0")
    with pytest.raises(FetchedRecordsUnsupported, match=r"aiokafka 0\.15\.0 is installed"):
        check_supported()
    monkeypatch.setattr(fetched_records, "UNPACK_RECORDS_SHA256", "0" * 64)
    with pytest.raises(FetchedRecordsUnsupported, match="_unpack_records changed"):
        check_supported()


def test_every_client_module_installs_it() -> None:
    # streamer.app.kafka is where every client's settings come from (aiokafka_kwargs, faust's
    # broker settings): importing it installs the lenient records, in a fresh process here.
    code = ("import aiokafka.consumer.fetcher as f, streamer.app.kafka; "
            "print(f.PartitionRecords.__name__, f.MemoryRecords.__name__)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.split() == ["LenientPartitionRecords", "FetchedRecords"]
