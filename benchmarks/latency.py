"""Latency from a purchase's produce time to its revised offer's arrival on ``offers``.

One command: embedded broker (127.0.0.1), one ``streamer worker`` subprocess on fresh topics,
then for each rate in ``--rates`` a steady stream of purchases for ``--seconds`` (after
``--warmup`` seconds at the same rate, not measured), produced on a fixed schedule (events due
are sent every millisecond tick; a producer that falls behind is reported, not hidden).

Matching: purchase *i* carries event time ``T0 + i`` ms (unique), and every offer the worker
builds from an anchor's slice of that order carries ``ts = T0 + i``, so each offer read back
maps to exactly one purchase. Latency = the offer's arrival at this process's consumer minus
the moment the purchase was handed to the producer (same clock, same process). Offers are
read for ``--drain`` seconds after the last purchase; purchases whose offers never arrive in
that time are counted as ``missing`` (they are a backlog, not a low latency).

Offers settings (``--offers``):

- ``every-purchase`` (the default): ``min_interval_s=0`` and ``min_support=1`` (as in the
  integration tests), so that every purchase that changes an anchor's offer materially revises
  it (0.56 offers per purchase over 10 s at 500/s, each with its logged decision): a stress
  case;
- ``defaults``: the worker's default offer settings (an anchor reconsidered at most once per
  5 s of event time), with event time = the wall clock at produce time, as in production. Most
  purchases then revise nothing; the latency is that of the purchases that did. An offer maps
  to the purchases of its event time (ms) holding its anchor; when several do, the earliest
  produced is taken (the larger latency).

``--pipeline relay`` measures the floor instead of the worker: a plain aiokafka process (no
faust, no state, no decisions) with the worker's two hops: it reads purchases, sends each
batch's items as one message per partition of an intermediate topic (as the purchases agent
fans baskets out), reads those back and sends one offer-shaped record per item to ``offers``.
Same broker, same fetch wait (``kafka.fetch_max_wait_ms``), same producer linger (0), same
matching (``every-purchase``): what the produce -> broker -> fetch path costs on this machine
before any of the worker's own work. ``--pipeline relay1`` is the same relay with one hop: it
sends the offer-shaped records straight from the purchases it reads, the path a purchase takes
through the worker when its item baskets are learned in place (``worker.local_baskets``).

The purchases' producer sends each millisecond tick's purchases at once, with linger 0 by
default (``--producer-linger-ms``): each becomes a record batch of its own, the embedded
broker's costliest case (``broker_fetch.py``). Besides the percentiles of the whole run, the
p50 and p99 of each third of it (by produce time) are reported: a latency that grows from
third to third while the worker keeps up is the broker's growing cost per fetch.

    PYTHONPATH=. python benchmarks/latency.py --rates 2000,10000 --seconds 10 --json lat.json
    PYTHONPATH=. python benchmarks/latency.py --rates 2000,10000 --offers defaults
    PYTHONPATH=. python benchmarks/latency.py --rates 2000 --pipeline relay
    PYTHONPATH=. python benchmarks/latency.py --rates 2000 --pipeline relay1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import PARTITIONS, Child, StreamerWorker, child_env

T0 = 1_700_000_000_000


def purchase(i: int, ts: int, rng: random.Random, ids: list[str], cum: list[float],
             prices: dict[str, float]) -> tuple[bytes, bytes, list[str]]:
    size = min(8, 1 + int(rng.expovariate(1 / 1.6)))
    items = list(dict.fromkeys(rng.choices(ids, cum_weights=cum, k=size)))
    user = f"u{rng.randrange(50_000)}"
    event = {"event_id": f"lat-{i}", "ts": ts, "user_id": user, "session_id": f"s{i}",
             "order_id": f"o{i}", "items": [{"item_id": x, "quantity": 1,
                                             "unit_price": prices[x]} for x in items]}
    return user.encode(), json.dumps(event, separators=(",", ":")).encode(), items


async def measure(bootstrap: str, settings: Any, rate: float, warmup_s: float, seconds: float,
                  drain_s: float, first_index: int, consumed: Any,
                  wall_event_time: bool = False, linger_ms: int = 0) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    rng = random.Random(first_index)
    catalogue = 2000
    ids = [f"SKU{i:05d}" for i in range(catalogue)]
    prices = {x: round(rng.uniform(1, 100), 2) for x in ids}
    cum, acc = [], 0.0
    for rank in range(catalogue):
        acc += 1.0 / (rank + 1)
        cum.append(acc)

    t = settings.topics
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=5)
    await consumer.start()
    consumer.assign([TopicPartition(t.offers, p) for p in range(PARTITIONS)])
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    await producer.start()

    sent_at: dict[int, float] = {}  # event index -> produce time (measured part only)
    # event time -> (index, items) of the purchases of that ms (wall_event_time only)
    by_ts: dict[int, list[tuple[int, list[str]]]] = {}
    arrivals: list[tuple[str, int, float]] = []  # (anchor, offer ts, arrival)
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    offer = json.loads(r.value)
                    arrivals.append((offer["anchor_item_id"], offer["ts"], now))

    reader = asyncio.create_task(read())
    total = int(rate * (warmup_s + seconds))
    warm = int(rate * warmup_s)
    start = time.perf_counter()
    i = 0
    marks: list[tuple[float, float]] = []  # (time, purchases the worker consumed)
    try:
        while i < total:
            if i >= warm and not marks:
                marks.append((time.perf_counter(), await asyncio.to_thread(consumed)))
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while i < due:
                idx = first_index + i
                ts = int(time.time() * 1000) if wall_event_time else T0 + idx
                key, value, items = purchase(idx, ts, rng, ids, cum, prices)
                if i >= warm:
                    sent_at[idx] = time.perf_counter()
                    if wall_event_time:
                        by_ts.setdefault(ts, []).append((idx, items))
                await producer.send(t.purchases, value, key=key)
                i += 1
            await asyncio.sleep(0.001)  # the schedule's tick
        produced_s = time.perf_counter() - start
        marks.append((time.perf_counter(), await asyncio.to_thread(consumed)))
        await producer.flush()
        end = time.perf_counter() + drain_s
        while time.perf_counter() < end:
            await asyncio.sleep(0.1)  # reading offers that are still coming
    finally:
        done.set()
        await reader
        await producer.stop()
        await consumer.stop()

    def source(anchor: str, ts: int) -> int | None:
        """The measured purchase an offer answers (None: a warm-up one, or none)."""
        if not wall_event_time:
            return ts - T0 if ts - T0 in sent_at else None
        # Several purchases of one ms may hold the anchor: the earliest produced (their
        # indexes grow with produce time), so a latency is never understated.
        return next((idx for idx, items in by_ts.get(ts, ()) if anchor in items), None)

    matched = [(idx, now) for anchor, ts, now in arrivals
               if (idx := source(anchor, ts)) is not None]
    latencies = [(now - sent_at[idx]) * 1000 for idx, now in matched]
    answered = {idx for idx, _ in matched}
    measured_end = max(sent_at.values()) if sent_at else start
    achieved = len(sent_at) / (measured_end - min(sent_at.values())) if len(sent_at) > 1 else 0
    out: dict[str, Any] = {
        "rate_target": rate,
        "rate_produced": total / produced_s,
        "rate_produced_measured_part": achieved,
        "purchases": len(sent_at),
        "purchases_with_offer": len(answered),
        "offers": len(latencies),
        # purchases/s the worker got through while the measured part was produced
        "rate_worker": (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
        if len(marks) == 2 else None,
    }
    if latencies:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        out |= {"p50_ms": statistics.median(latencies), "p90_ms": q[89], "p99_ms": q[98],
                "max_ms": max(latencies)}
        # By produce time, the measured part in thirds: a latency that grows as the topics
        # fill is the broker's (benchmarks/broker_fetch.py), not a backlog of the worker's.
        first_sent = min(sent_at.values())
        span = (measured_end - first_sent) or 1.0
        thirds: list[list[float]] = [[], [], []]
        for (idx, _), latency in zip(matched, latencies, strict=True):
            thirds[min(2, int(3 * (sent_at[idx] - first_sent) / span))].append(latency)
        out["p50_by_third_ms"] = [statistics.median(x) if x else None for x in thirds]
        out["p99_by_third_ms"] = [
            statistics.quantiles(x, n=100, method="inclusive")[98] if len(x) > 1 else None
            for x in thirds]
    return out


async def relay(bootstrap: str, purchases: str, mid: str, offers: str, fetch_max_wait_ms: int,
                ready: Path) -> None:
    """The ``--pipeline relay`` child (module doc): runs until killed. ``mid`` empty: the
    one-hop relay (``relay1``), offers sent straight from the purchases."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_max_wait_ms)
    await consumer.start()
    topics = (purchases, mid) if mid else (purchases,)
    consumer.assign([TopicPartition(t, p) for t in topics for p in range(PARTITIONS)])
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    ready.write_text("ready")

    async def send_offer(item: str, ts: int) -> None:
        await producer.send(offers, json.dumps({"anchor_item_id": item, "ts": ts}).encode(),
                            key=item.encode())

    while True:
        batch = await consumer.getmany(timeout_ms=1000)
        by_partition: dict[int, list[tuple[str, int]]] = {}
        for tp, records in batch.items():
            for r in records:
                if tp.topic == purchases:
                    event = json.loads(r.value)
                    for line in event["items"]:
                        item = line["item_id"]
                        if not mid:
                            await send_offer(item, event["ts"])
                            continue
                        by_partition.setdefault(zlib.crc32(item.encode()) % PARTITIONS,
                                                []).append((item, event["ts"]))
                else:
                    for item, ts in json.loads(r.value):
                        await send_offer(item, ts)
        for partition, baskets in by_partition.items():
            await producer.send(mid, json.dumps(baskets).encode(), partition=partition)


class RelayChild:
    """The relay as a subprocess (its own process and CPU, as the worker has)."""

    def __init__(self, bootstrap: str, settings: Any, workdir: Path, *, hops: int = 2) -> None:
        from streamer.app.broker import create_topics

        t = settings.topics
        name = f"relay-mid-{uuid.uuid4().hex[:8]}"
        self.mid = name if hops == 2 else ""
        if self.mid:
            asyncio.run(create_topics(bootstrap, [self.mid], partitions=PARTITIONS))
        self.ready = workdir / f"{name}.ready"
        self.child = Child([sys.executable, __file__, "--relay-child", bootstrap, t.purchases,
                            self.mid, t.offers, str(settings.kafka.fetch_max_wait_ms),
                            str(self.ready)], child_env(), workdir / f"{name}.log")

    def stats(self) -> dict[str, Any]:
        return {"ready": self.ready.exists()}

    def consumed(self) -> float:
        return 0.0  # not counted (the printed line says "relay" instead of a rate)


def main() -> None:
    if len(sys.argv) == 8 and sys.argv[1] == "--relay-child":
        boot, purchases, mid, offers, wait_ms, ready = sys.argv[2:]
        asyncio.run(relay(boot, purchases, mid, offers, int(wait_ms), Path(ready)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="2000,10000")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--drain", type=float, default=10.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker-env", action="append", default=[], metavar="K=V")
    p.add_argument("--offers", choices=("every-purchase", "defaults"), default="every-purchase",
                   help="offer settings (see the module doc)")
    p.add_argument("--pipeline", choices=("worker", "relay", "relay1"), default="worker",
                   help="measure streamer's worker, or the broker path's floor (module doc)")
    p.add_argument("--producer-linger-ms", type=int, default=0,
                   help="linger of the purchases' producer (the storefront's; default 0: "
                        "each tick's purchases are their own record batches)")
    args = p.parse_args()
    defaults = args.offers == "defaults"
    relaying = args.pipeline.startswith("relay")
    if relaying and defaults:
        p.error(f"--pipeline {args.pipeline} answers every purchase: use --offers every-purchase")

    from streamer.app.broker import EmbeddedBroker, free_port, on_embedded
    from streamer.app.worker import ensure_topics
    from streamer.settings import Settings

    extra_env = dict(kv.split("=", 1) for kv in args.worker_env)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, \
            EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        workdir = Path(tmp)
        for n, rate in enumerate(float(r) for r in args.rates.split(",")):
            # A fresh worker and topics per rate: no backlog carries over between rates.
            suffix = uuid.uuid4().hex[:8]
            settings = on_embedded(Settings(
                topics={name: f"{name}-{suffix}" for name in
                        ("clicks", "purchases", "offers", "feedback", "rewards",
                         "dead_letters")}
                | {"policy_updates": f"policy-updates-{suffix}", "partitions": PARTITIONS},
                worker={"app_id": f"bench-latency-{suffix}", "web_port": free_port(),
                        "data_dir": str(workdir / f"data-{suffix}")},
                offers={} if defaults else {"min_interval_s": 0.0, "min_support": 1.0},
            ), broker.bootstrap)
            asyncio.run(ensure_topics(settings))
            worker: StreamerWorker | RelayChild
            if relaying:
                worker = RelayChild(broker.bootstrap, settings, workdir,
                                    hops=1 if args.pipeline == "relay1" else 2)
            else:
                worker = StreamerWorker(settings, workdir, extra_env)
            try:
                deadline = time.monotonic() + 90
                while not worker.stats().get("ready"):
                    if time.monotonic() > deadline or not worker.child.alive():
                        raise RuntimeError(f"worker not ready; see {worker.child.log}")
                    time.sleep(0.2)  # waiting for the group to form
                res = asyncio.run(measure(broker.bootstrap, settings, rate, args.warmup,
                                          args.seconds, args.drain, n * 10_000_000,
                                          worker.consumed, wall_event_time=defaults,
                                          linger_ms=args.producer_linger_ms))
                res["worker_consumed"] = worker.consumed()
                res["offers_settings"] = args.offers
                res["pipeline"] = args.pipeline
            finally:
                worker.child.stop()
            results.append(res)
            consumed = (args.pipeline if relaying
                        else f"worker consumed {res['rate_worker'] or 0:>7,.0f}/s")
            line = (f"{rate:>7,.0f}/s target, {res['rate_produced']:>7,.0f}/s produced: "
                    f"{consumed}: "
                    f"{res['purchases_with_offer']}/{res['purchases']} purchases answered, "
                    f"{res['offers']} offers")
            if "p50_ms" in res:
                line += (f"; p50 {res['p50_ms']:.1f} ms, p90 {res['p90_ms']:.1f} ms, "
                         f"p99 {res['p99_ms']:.1f} ms, max {res['max_ms']:.0f} ms; p99 by "
                         "third of the run " + " / ".join(
                             "-" if x is None else f"{x:.0f}" for x in res["p99_by_third_ms"])
                         + " ms")
            print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
