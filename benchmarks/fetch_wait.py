"""What a consumer's fetch wait (``kafka.fetch_max_wait_ms``) costs on the embedded broker.

One command, one embedded broker (Tansu, 127.0.0.1), for each wait in ``--waits``:

- *delivery*: a consumer (aiokafka, ``fetch_max_wait_ms`` = the wait) reads a record produced
  after a pause (0.1-0.3 s, the consumer caught up and fetching again), subscribed to one
  partition, then to 8 (two 4-partition topics, one of them never written: a worker's fetch
  spans every partition it consumes). Printed: the median and largest produce-to-read time over
  ``--records`` records. Apache Kafka answers a fetch as soon as data arrives in any of its
  partitions, so there the wait adds nothing; this broker answers a one-partition fetch so, but
  holds a fetch of several for the whole wait;
- *idle*: a ``streamer worker`` (default settings, the wait set) with nothing to read, for
  ``--seconds`` after it joined and settled: the cores it keeps busy polling, and the cores
  the broker spends answering it.

Why: the wait is a trade on this broker only. Short, it bounds the delivery delay of a
several-partition fetch; long, an idle worker fetches rarely. The worker's default (500 ms,
Kafka's own) is for Kafka; against this broker, ``streamer demo``, the test fixtures and the
latency benchmark take 20 ms (``streamer.app.broker.EMBEDDED_FETCH_MAX_WAIT_MS``).

    PYTHONPATH=. python benchmarks/fetch_wait.py --waits 20,100,500 --json fw.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import StreamerWorker, worker_settings


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def delivery_ms(bootstrap: str, wait_ms: int, partitions: int, records: int,
                      rng: random.Random) -> list[float]:
    """Produce-to-read times (ms) of ``records`` records, each produced after a pause, read by
    a consumer subscribed to ``partitions`` partitions (4 of them written to, round robin;
    with 8, another 4-partition topic never written)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streamer.app.broker import create_topics

    suffix = uuid.uuid4().hex[:8]
    written, idle = f"fw-{suffix}", f"fw-idle-{suffix}"
    await create_topics(bootstrap, [written], partitions=min(partitions, 4))
    topics = [written]
    if partitions > 4:
        await create_topics(bootstrap, [idle], partitions=partitions - 4)
        topics.append(idle)
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    try:
        await producer.send_and_wait(written, b"first", partition=0)  # joined and assigned
        await asyncio.wait_for(consumer.getone(), 30)
        out = []
        for i in range(records):
            await asyncio.sleep(rng.uniform(0.1, 0.3))
            t0 = time.perf_counter()
            await producer.send_and_wait(written, b"x", partition=i % min(partitions, 4))
            await asyncio.wait_for(consumer.getone(), 30)
            out.append(1000 * (time.perf_counter() - t0))
        return out
    finally:
        await consumer.stop()
        await producer.stop()


def idle_cores(bootstrap: str, broker_pid: int, wait_ms: int, seconds: float,
               workdir: Path) -> tuple[float, float]:
    """(worker cores, broker cores) over ``seconds`` of an idle worker fetching with
    ``wait_ms``, after it is ready and its group settled."""
    from streamer.app.worker import ensure_topics

    settings = worker_settings(bootstrap, f"purchases-idle-{uuid.uuid4().hex[:8]}", workdir)
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"fetch_max_wait_ms": wait_ms})})
    asyncio.run(ensure_topics(settings))
    # Passed explicitly: settings equal to their defaults do not reach the child otherwise.
    worker = StreamerWorker(settings, workdir,
                            {"STREAMER__KAFKA__FETCH_MAX_WAIT_MS": str(wait_ms)})
    try:
        deadline = time.monotonic() + 90
        while not worker.stats().get("ready"):
            if time.monotonic() > deadline or not worker.child.alive():
                raise RuntimeError(f"worker not ready; see {worker.child.log}")
            time.sleep(0.2)
        time.sleep(5.0)  # not a synchronisation: the span starts after start-up's work
        w0, b0, t0 = worker.cpu_s(), process_cpu_s(broker_pid), time.perf_counter()
        time.sleep(seconds)
        w1, b1, t1 = worker.cpu_s(), process_cpu_s(broker_pid), time.perf_counter()
        return (w1 - w0) / (t1 - t0), (b1 - b0) / (t1 - t0)
    finally:
        worker.child.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--waits", default="20,100,500", help="fetch waits (ms), comma-separated")
    p.add_argument("--records", type=int, default=20, help="records timed per delivery case")
    p.add_argument("--seconds", type=float, default=10.0, help="idle span measured per wait")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    waits = [int(w) for w in args.waits.split(",") if w.strip()]
    if not waits or min(waits) < 1 or args.records < 1 or args.seconds <= 0:
        p.error("--waits must be >= 1 ms, --records >= 1, --seconds > 0")

    from streamer.app.broker import EmbeddedBroker

    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-fetch-wait-") as tmp, \
            EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        assert broker.pid is not None
        print(f"embedded broker on {broker.bootstrap}; {args.records} records per delivery "
              f"case, {args.seconds:g} s idle per wait")
        print(f"{'wait':>7}  {'1 partition: median/max':>24}  {'8 partitions: median/max':>25}"
              f"  {'idle worker':>12}  {'broker for it':>13}")
        for wait in waits:
            one = asyncio.run(delivery_ms(broker.bootstrap, wait, 1, args.records, rng))
            eight = asyncio.run(delivery_ms(broker.bootstrap, wait, 8, args.records, rng))
            worker, broker_cores = idle_cores(broker.bootstrap, broker.pid, wait, args.seconds,
                                              Path(tmp))
            row = {"fetch_max_wait_ms": wait,
                   "delivery_ms_1_partition": {"median": statistics.median(one),
                                               "max": max(one)},
                   "delivery_ms_8_partitions": {"median": statistics.median(eight),
                                                "max": max(eight)},
                   "idle_worker_cores": worker, "idle_broker_cores": broker_cores}
            rows.append(row)
            print(f"{wait:>5} ms  {statistics.median(one):>12.1f} / {max(one):>6.1f} ms"
                  f"  {statistics.median(eight):>13.1f} / {max(eight):>6.1f} ms"
                  f"  {worker:>7.3f} cores  {broker_cores:>7.3f} cores", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"records": args.records, "idle_seconds": args.seconds,
                                         "waits": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
