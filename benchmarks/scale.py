"""State at scale: memory of the co-purchase table, and table recovery time after a restart.

Memory: ``--items`` anchors with ``--partners`` partners each, as the worker's ``items`` table
stores them (key: item id ``str``; value: ``ItemRecord`` encoded as the table encodes it,
MessagePack, ``bytes``; partner ids like ``SKU0001234``, co-counts arbitrary floats as forward
decay makes them; no triples; one purchases partition's mark), in a dict as faust's memory
store holds them. Measured as the process's RSS growth and as the sum of ``sys.getsizeof``
over keys and values plus the dict, at ``--memory-items`` (default 1M) anchors.

Recovery: a ``streamer worker`` is started on fresh topics (timed to ``/stats/`` ready: the
empty-state baseline); ``--recovery-items`` baskets, one per anchor with ``--partners``
partners, are produced to its item-baskets topic, so the worker builds that state and writes
every changelog itself (items, seen, counts); it is stopped and started again and timed from
process start to (a) ready and (b) ``tracked_items`` (the items table's size) reaching the
number of anchors, and by faust's own log, from "Restoring state" to "Done reading" the
changelogs (the recovery alone, without the group join's and start-up's noise). (Records
produced straight into the changelog by another client were never served to faust's
recovery consumer by the embedded broker, so the worker writes them.)
Each size is a fresh broker, topics and group; several sizes show the slope used to
extrapolate to 1M. 1M itself runs too where memory allows (the embedded broker keeps
everything in memory: ~2.2 GB of it then): ``--memory-items 0 --recovery-items 1000000``, 7
minutes here, the recovery 177 s against 25.6 s for 200k (per item 177 against 128 us: the
embedded broker's fetches slow down as a partition's batches grow, see README).

    PYTHONPATH=. python benchmarks/scale.py --memory-items 1000000 \\
        --recovery-items 5000,20000 --json scale.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import PARTITIONS, StreamerWorker

TS0 = 1_700_000_000_000


def encoded_items(n: int, partners: int, seed: int = 3) -> Any:
    """Yield ``(anchor, encoded ItemRecord)`` for ``n`` anchors in a 10x larger catalogue,
    encoded as the worker's items table encodes them (``streamer.app.tables.value_codec``)."""
    from streamer.app.tables import value_codec
    from streamer.copurchase import Decayed, ItemStats
    from streamer.engine import ItemRecord

    rng = random.Random(seed)
    encode, _ = value_codec(ItemRecord)
    catalogue = max(10 * n, 1000)
    for i in range(n):
        ids = {f"SKU{rng.randrange(catalogue):07d}" for _ in range(partners + 8)}
        row = {p: rng.uniform(0.5, 40.0) for p in list(ids)[:partners]}
        count = sum(row.values()) * 0.7
        stats = ItemStats(TS0, count, row, 0.0, {}, 0.0)
        yield f"SKU{i:07d}", encode(ItemRecord(stats, Decayed(count, TS0), {i % 4: i}))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(n: int, partners: int) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    store: dict[str, bytes] = {}
    t0 = time.perf_counter()
    for key, value in encoded_items(n, partners):
        store[key] = value
    build_s = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    sized = sys.getsizeof(store) + sum(sys.getsizeof(k) + sys.getsizeof(v)
                                       for k, v in store.items())
    value_bytes = sum(len(v) for v in store.values())
    return {"items": n, "partners": partners, "rss_growth_bytes": after - before,
            "getsizeof_bytes": sized, "encoded_value_bytes": value_bytes,
            "mean_value_bytes": value_bytes / n, "build_s": build_s}


async def produce_baskets(bootstrap: str, topic: str, n: int, partners: int) -> float:
    """One ``ItemBasket`` per anchor with ``partners`` partners, to the items agent's own
    source topic, as the purchases agent sends them (a list of baskets per message, on the
    anchor's partition): the worker builds the state (and writes its changelogs) itself."""
    import msgspec
    from aiokafka import AIOKafkaProducer

    from streamer.app.kafka import key_partition
    from streamer.engine import ItemBasket

    encode = msgspec.json.Encoder().encode
    rng = random.Random(5)
    catalogue = max(10 * n, 1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = []
        for i in range(n):
            anchor = f"SKU{i:07d}"
            ids = list(dict.fromkeys(f"SKU{rng.randrange(catalogue):07d}"
                                     for _ in range(partners + 8)))
            basket = ItemBasket(anchor=anchor, partners=[p for p in ids if p != anchor][:partners],
                                ts=TS0 + i, event_id=f"scale-{i}")
            futures.append(await producer.send(topic, encode([basket]),
                                               partition=key_partition(anchor, PARTITIONS)))
        await asyncio.gather(*futures)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


def wait(cond: Any, timeout_s: float, what: str, worker: StreamerWorker) -> float:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline or not worker.child.alive():
            raise RuntimeError(f"timed out waiting for {what}; see {worker.child.log}")
        time.sleep(0.1)  # polling the worker's stats page
    return time.perf_counter()


def measure_recovery(n: int, partners: int, timeout_s: float) -> dict[str, Any]:
    from streamer.app.broker import EmbeddedBroker, free_port, on_embedded
    from streamer.app.worker import ensure_topics
    from streamer.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
            EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        workdir = Path(tmp)
        suffix = uuid.uuid4().hex[:8]
        settings = on_embedded(Settings(
            topics={name: f"{name}-{suffix}" for name in
                    ("clicks", "purchases", "offers", "feedback", "rewards", "dead_letters")}
            | {"policy_updates": f"policy-updates-{suffix}", "partitions": PARTITIONS},
            worker={"app_id": f"bench-scale-{suffix}", "web_port": free_port(),
                    "data_dir": str(workdir / "data")},
        ), broker.bootstrap)
        asyncio.run(ensure_topics(settings))
        out: dict[str, Any] = {"items": n, "partners": partners}

        t0 = time.perf_counter()
        worker = StreamerWorker(settings, workdir, {})
        try:
            out["empty_ready_s"] = wait(lambda: worker.stats().get("ready"), 120, "ready",
                                        worker) - t0
            baskets = f"{settings.worker.app_id}-item-baskets"
            out["produce_s"] = asyncio.run(produce_baskets(broker.bootstrap, baskets, n,
                                                           partners))
            t1 = time.perf_counter()
            out["build_s"] = wait(lambda: worker.stats().get("tracked_items", 0) >= n,
                                  timeout_s, "the worker to learn every item", worker) - t1
            time.sleep(2.0)  # past one commit interval: offsets and changelogs flushed
        finally:
            worker.child.stop()

        t0 = time.perf_counter()
        worker = StreamerWorker(settings, workdir, {})
        try:
            out["ready_s"] = wait(lambda: worker.stats().get("ready"), timeout_s, "ready",
                                  worker) - t0
            out["recovered_s"] = wait(lambda: worker.stats().get("tracked_items", 0) >= n,
                                      timeout_s, "the items table to recover", worker) - t0
            out["worker_rss_bytes"] = int(Path(f"/proc/{worker.child.proc.pid}/statm")
                                          .read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        finally:
            worker.child.stop()
        out["recovery_s"] = out["recovered_s"] - out["empty_ready_s"]
        # faust's own account of the restart's recovery, without the group join and start-up
        # around it (their noise is larger than the recovery of a few thousand items).
        out["changelog_read_s"] = changelog_read_s(workdir / f"worker-{settings.worker.app_id}.log")
        return out


def changelog_read_s(log: Path) -> float | None:
    """Seconds between faust's last "Restoring state from changelog topics" and "Done reading
    from changelog topics" in a worker log (the last start's recovery); None if absent."""
    import datetime

    def stamp(line: str) -> datetime.datetime:
        return datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")

    start = end = None
    for line in log.read_text(errors="replace").splitlines():
        if "Restoring state from changelog topics" in line:
            start, end = stamp(line), None
        elif "Done reading from changelog topics" in line and start is not None:
            end = stamp(line)
    return (end - start).total_seconds() if start and end else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--memory-items", type=int, default=1_000_000)
    p.add_argument("--partners", type=int, default=50)
    p.add_argument("--recovery-items", default="5000,20000",
                   help="comma-separated sizes of the recovered items table")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    result: dict[str, Any] = {}

    if args.memory_items:
        mem = measure_memory(args.memory_items, args.partners)
        result["memory"] = mem
        gib = 1 << 30
        print(f"memory: {mem['items']:,} items x {mem['partners']} partners: encoded values "
              f"{mem['encoded_value_bytes'] / gib:.2f} GiB ({mem['mean_value_bytes']:,.0f} B "
              f"each); keys+values+dict {mem['getsizeof_bytes'] / gib:.2f} GiB; process RSS "
              f"+{mem['rss_growth_bytes'] / gib:.2f} GiB", flush=True)

    runs = []
    for n in (int(x) for x in args.recovery_items.split(",") if x):
        r = measure_recovery(n, args.partners, args.timeout)
        runs.append(r)
        print(f"recovery: {n:,} items: empty start {r['empty_ready_s']:.1f} s; restart ready "
              f"{r['ready_s']:.1f} s, table recovered {r['recovered_s']:.1f} s "
              f"(+{r['recovery_s']:.1f} s over empty, {n / max(r['recovery_s'], 1e-9):,.0f} "
              f"items/s); faust read the changelogs in "
              f"{r['changelog_read_s'] or float('nan'):.2f} s; "
              f"worker RSS {r['worker_rss_bytes'] / (1 << 20):,.0f} MiB", flush=True)
    if runs:
        result["recovery"] = runs
        if len(runs) >= 2:
            a, b = runs[0], runs[-1]
            slope = (b["recovery_s"] - a["recovery_s"]) / (b["items"] - a["items"])
        else:
            slope = runs[0]["recovery_s"] / runs[0]["items"]
        result["recovery_s_per_item"] = slope
        result["recovery_1m_extrapolated_s"] = slope * 1_000_000
        print(f"extrapolated: {slope * 1e6:,.0f} s to recover 1,000,000 items "
              f"({slope * 1e6:,.1f} us per item, linear in the changelog's records)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
