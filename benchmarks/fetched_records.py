"""What reading fetched batches through ``streamer.app.fetched_records`` costs on the normal path.

In process, no broker: the records of one fetched partition (a ``MemoryRecords`` and the
``PartitionRecords`` iterating it, as aiokafka's fetcher builds them) read to the end, with
aiokafka's classes and with streamer's (:class:`FetchedRecords`, which keeps the fetch
response's bytes; :class:`LenientPartitionRecords`, whose batch iteration runs in a ``try``).
Two shapes: 1,000 batches of one record (a producer that does not batch) and 10 batches of
1,000 records; each record a click-sized value with one header. Interleaved repeats; printed:
the medians in microseconds per fetched partition and per record, and streamer's / aiokafka's.

    PYTHONPATH=. python benchmarks/fetched_records.py --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition

from streamer.app import fetched_records

VALUE = (b'{"event_id":"e000001","ts":1700000000000,"user_id":"u1","session_id":"s1",'
         b'"item_id":"SKU000001","kind":"view"}')
TP = TopicPartition("clicks", 0)


def fetched(batches: int, per_batch: int) -> bytes:
    """``batches`` v2 batches of ``per_batch`` records each, back to back, as a fetch
    response holds them."""
    out = bytearray()
    for b in range(batches):
        builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 24)
        for i in range(per_batch):
            builder.append(i, timestamp=1_700_000_000_000, key=b"s1", value=VALUE,
                           headers=[("trace", b"t")])
        raw = builder.build()
        raw[0:8] = (b * per_batch).to_bytes(8, "big")  # base offset (outside the CRC)
        out += raw
    return bytes(out)


def read_s(data: bytes, records_class: Any, partition_records: Any) -> float:
    """Seconds to read every record of ``data`` as the fetcher would (CRCs checked)."""
    start = time.perf_counter()
    records = records_class(data)
    n = sum(1 for _ in partition_records(TP, records, [], 0, None, None, True, 0))
    elapsed = time.perf_counter() - start
    assert n > 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    stock = (fetched_records._STOCK_MEMORY_RECORDS, fetched_records._STOCK_PARTITION_RECORDS)
    ours = (fetched_records.FetchedRecords, fetched_records.LenientPartitionRecords)
    for batches, per_batch in ((1000, 1), (10, 1000)):
        data = fetched(batches, per_batch)
        n = batches * per_batch
        times: dict[str, list[float]] = {"aiokafka": [], "streamer": []}
        for _ in range(3):  # warm up both
            read_s(data, *stock), read_s(data, *ours)
        for r in range(args.repeats):
            order = [("aiokafka", stock), ("streamer", ours)]
            for name, classes in order if r % 2 else order[::-1]:
                times[name].append(read_s(data, *classes))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        print(f"{batches:>5} batches of {per_batch:>4} records: "
              + ", ".join(f"{name} {1e6 * m:8.0f} us ({1e6 * m / n:.2f} us/record)"
                          for name, m in med.items())
              + f"; streamer/aiokafka {med['streamer'] / med['aiokafka']:.3f}x")


if __name__ == "__main__":
    main()
