"""How far a compressed record batch inflates in a reader's memory, per codec.

aiokafka inflates a fetched batch whole before any of streamer's size checks (the worker's
``kafka.max_message_bytes`` sees each record afterwards), and only the compressed size of a
batch meets a limit on its way (the topic's ``max.message.bytes``). For each codec this builds
one batch holding a single record of zeros (``--mib`` MiB), as aiokafka's own producer writes
it, and prints its size on the wire, the ratio, what a batch of ``--limit-bytes`` (Apache
Kafka's default ``max.message.bytes``) would inflate to at that ratio, and how much a fresh
process's peak resident memory grew while aiokafka read the batch back.

Why: the README's *Security* section says what to set on the topics so that a small batch
cannot take a worker's memory; these are its figures. No broker is involved.

    PYTHONPATH=. python benchmarks/batch_inflation.py --mib 64
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def build_batch(codec_id: int, value: bytes) -> bytes:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec_id, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    builder.append(0, timestamp=None, key=None, value=value, headers=[])
    return bytes(builder.build())


def peak_kib() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited on exec)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def read_back(path: str) -> None:
    """Child: read the batch as a consumer does and print the value size and peak growth."""
    from aiokafka.record.memory_records import MemoryRecords

    raw = Path(path).read_bytes()
    before = peak_kib()
    batch = MemoryRecords(raw).next_batch()
    assert batch is not None
    size = sum(len(record.value or b"") for record in batch)
    print(size, peak_kib() - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="size of the record's value")
    parser.add_argument("--limit-bytes", type=int, default=1_048_588,
                        help="a topic's max.message.bytes (Apache Kafka's default)")
    parser.add_argument("--read-back", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_back:
        read_back(args.read_back)
        return
    value = bytes(args.mib << 20)
    print(f"one record of {args.mib} MiB of zeros per batch; limit {args.limit_bytes:,} bytes")
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec_id in CODECS.items():
            path = Path(tmp) / f"{name}.batch"
            path.write_bytes(build_batch(codec_id, value))
            wire = path.stat().st_size
            out = subprocess.run([sys.executable, __file__, "--read-back", str(path)],
                                 check=True, capture_output=True, text=True).stdout.split()
            inflated, grew_kib = int(out[0]), int(out[1])
            ratio = inflated / wire
            print(f"{name:7s} {wire / 1024:9.1f} KiB on the wire  x{ratio:8.0f}  "
                  f"a batch at the limit inflates to {ratio * args.limit_bytes / 2**20:8.0f} MiB  "
                  f"reader's peak memory grew {grew_kib / 1024:5.0f} MiB")


if __name__ == "__main__":
    main()
