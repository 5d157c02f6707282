"""What a fetch costs the embedded broker as a partition fills, by how the records were batched.

The embedded broker (Tansu, memory storage) is the broker of the demo, the tests and every
other benchmark here. This measures it alone, with plain aiokafka clients, no streamer code:

- one topic per way of producing, 1 partition, fresh broker;
- ``--chunks`` times: ``--chunk`` records of 200 bytes are produced, either ``single``
  (each awaited before the next is sent: one record batch per record, as a producer with
  ``linger_ms=0`` writes at a low rate, or a worker's hop sends its small batches) or
  ``batched`` (sent together with ``linger_ms=5``: a few large record batches);
- after each chunk, the median over ``--fetches`` fetches of the partition's last record
  (seek to it, ``getmany``; a fetch unanswered within 5 s counts as infinite, ``null`` in the
  JSON) and of one more record's produce round trip (in ``batched`` mode it includes the
  5 ms linger).

What the latency benchmark (``latency.py``) sees follows from the ``single`` rows: on the
memory engine a fetch costs time in proportion to the record batches already in the
partition, whatever offset it asks for, while the same records in large batches cost little.
A mode stops once no fetch is answered any more.

    PYTHONPATH=. python benchmarks/broker_fetch.py --chunk 5000 --chunks 8 --json fetch.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAYLOAD = b"x" * 200
FETCH_TIMEOUT_MS = 5000


async def measure(bootstrap: str, mode: str, chunk: int, chunks: int,
                  fetches: int) -> list[dict[str, Any]]:
    """One fresh topic filled ``chunks`` x ``chunk`` records in ``mode``; a row per chunk."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from streamer.app.broker import create_topics

    topic = f"fetch-{mode}"
    await create_topics(bootstrap, [topic], partitions=1, replication_factor=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap,
                                linger_ms=5 if mode == "batched" else 0,
                                max_batch_size=256 * 1024)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=20)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    rows = []
    total = 0
    try:
        for _ in range(chunks):
            if mode == "single":
                for _ in range(chunk):
                    await (await producer.send(topic, PAYLOAD, partition=0))
            else:
                futures = [await producer.send(topic, PAYLOAD, partition=0)
                           for _ in range(chunk)]
                await asyncio.gather(*futures)
            total += chunk
            produce_ms, fetch_ms = [], []
            for _ in range(fetches):
                t0 = time.perf_counter()
                await (await producer.send(topic, PAYLOAD, partition=0))
                produce_ms.append(1e3 * (time.perf_counter() - t0))
                total += 1
                consumer.seek(tp, total - 1)
                t0 = time.perf_counter()
                got = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS)
                fetch_ms.append(1e3 * (time.perf_counter() - t0))
                if not got.get(tp):  # the broker served nothing within the timeout
                    fetch_ms[-1] = float("inf")
            row = {"mode": mode, "records": total,
                   "fetch_last_ms": statistics.median(fetch_ms),
                   "produce_rtt_ms": statistics.median(produce_ms),
                   "fetches_unanswered": sum(f == float("inf") for f in fetch_ms)}
            rows.append(row)
            print(f"  {mode:8s} {total:>8,} records: fetch of the last record "
                  f"{row['fetch_last_ms']:8.2f} ms, produce round trip "
                  f"{row['produce_rtt_ms']:6.2f} ms"
                  + (f"  ({row['fetches_unanswered']} fetches unanswered in "
                     f"{FETCH_TIMEOUT_MS} ms)" if row["fetches_unanswered"] else ""),
                  flush=True)
            if row["fetches_unanswered"] == fetches:
                print(f"  {mode}: no fetch answered any more; stopping this mode")
                break
    finally:
        await consumer.stop()
        await producer.stop()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunk", type=int, default=5000, help="records produced per step")
    p.add_argument("--chunks", type=int, default=8, help="steps")
    p.add_argument("--fetches", type=int, default=20, help="fetches timed per step (median)")
    p.add_argument("--modes", default="batched,single")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from streamer.app.broker import EmbeddedBroker

    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp, \
                EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
            rows += asyncio.run(measure(broker.bootstrap, mode, args.chunk, args.chunks,
                                        args.fetches))
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_mode.setdefault(row["mode"], []).append(row)
    print("\nfetch of the last record, first step -> last step (medians):")
    for mode, mode_rows in by_mode.items():
        first, last = mode_rows[0], mode_rows[-1]
        answered = [r for r in mode_rows if r["fetch_last_ms"] != float("inf")]
        end = answered[-1] if answered else first
        line = (f"  {mode:8s} {first['fetch_last_ms']:.2f} ms at {first['records']:,} records "
                f"-> {end['fetch_last_ms']:.2f} ms at {end['records']:,} "
                f"({end['fetch_last_ms'] / first['fetch_last_ms']:.1f}x)")
        if end is not last:
            line += f"; unanswered at {last['records']:,}"
        print(line)
    if args.json is not None:
        finite = [{k: (None if v == float("inf") else v) for k, v in row.items()}
                  for row in rows]
        args.json.write_text(json.dumps({"chunk": args.chunk, "rows": finite}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
