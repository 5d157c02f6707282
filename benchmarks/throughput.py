"""Throughput of streamer's worker against its ceilings and its peers, one broker, same events.

One command starts the embedded broker (Tansu, 127.0.0.1), produces ``--events`` synthetic
purchases once to a 4-partition topic, then measures, ``--repeats`` times each (interleaved,
in reverse order every other repeat, so load from other jobs and the broker's growing state
spread over all of them), the rate at which each consumer gets through the same events:

- ``ceiling``: raw aiokafka consume (no decoding);
- ``plain_loop``: an aiokafka loop decoding purchases (streamer's codec) and counting
  co-purchases in plain dicts;
- ``engine_loop``: an aiokafka loop running streamer's engine in process (fan-out, co-purchase
  statistics, dedup, offers): streamer's own work without faust. It takes each fetch
  partition by partition, so its event time jumps back and forth and fewer offers are due
  (at 100 ms spacing, in process: 56-62 us per purchase so, 87-92 in event-time order);
- ``faust_noop``: a faust agent that does nothing per event (faust's floor), on ``--loop``
  (asyncio, faust's default);
- ``faust_noop_uvloop``: the same on uvloop, the event loop ``streamer worker`` installs: the
  floor on equal terms (uvloop takes ~15-20 % off faust's CPU per event here);
- ``naive_peer``: a faust agent with default settings decoding JSON and updating one Table
  per event;
- ``streamer``: ``streamer worker`` as a subprocess doing its full work (decode, dead-letter
  check, reward attribution, fan-out on the item-baskets topic, co-purchase tables, offers);
- ``streamer_no_engine``: the same worker with the items agent's engine call
  (``Engine.learn_baskets``: co-purchase learning, offer revision, decision logging) replaced
  by a no-op: what everything around the engine costs (faust's delivery, both hops through the
  broker, de-duplication, fan-out, attribution, commits), the rate streamer would reach if the
  engine cost nothing;
- ``streamer_learned``: the same worker serving a learned policy, as it does once the trainer
  has published one: a version (``TorchPolicy.initial``: a trained network costs the same) is
  on its ``policy-updates`` topic before it starts, and it has adopted it before the timed
  events come. Every offer revision then featurizes each candidate at every discount level and
  runs the policy's network. The conversion model stays cold (these purchases close no
  impression); ``benchmarks/engine_regimes.py`` measures the engine with it warm, in process.

``--warmup`` events come first and are consumed untimed (by default enough to reach the
worker's steady state: ``steady_warmup``, 41,000 at the default spacing); rates are
events/s over the ``--events`` after them, to the last one done. faust children and the
in-process loops read all of them from the preloaded topic and time themselves from the
first event after the warm-up. streamer's worker gets a topic of its own holding the warm-up
events, takes them all (and learns their item baskets) untimed, then the timed events are
produced (as ``--workers`` does) and timed from the moment the worker takes the first of them,
to the moment its items agent has taken every item basket the purchases fan out to, so its
rate includes the downstream items agent. The worker is read through ``/stats/``: every 5 ms
while it waits for the first timed event (it is idle: the polls cost it nothing that is
timed), every 100 ms while it works (each poll costs it ~1 ms of CPU), every 20 ms once the
end is near. Why not from the moment production starts, as before: the first events reached
the worker up to a few hundred ms later (a fetch waiting on an empty partition), all in the
span, and the end was read up to 100 ms late: over such spans the worker used 0.79-0.89 of a
core (four runs, CPU per event times events/s), the no-op agent over its own 1.0-1.05.
Start-up and group joins are not timed. Why the warm-up: a worker that starts on a backlog
fans purchases out faster than its items agent takes them, and learns the baskets kept
meanwhile in one large batch once learning in place is armed (``streamer.app.local_baskets``),
revising each anchor's offer once for thousands of purchases; in a 20,000-event run timed from
the first event most purchases were in that phase (~12-20k purchases/s, then ~6-10k/s once
steady).
``--warmup 0`` times from the first event (the preloaded topic for every mode), as before.

The purchases are ``--event-spacing-ms`` apart in event time: 100 ms by default, so a run of
thousands of purchases per second is a replay compressed about 1000 times, and 0.1 ms is a
live stream at 10,000 purchases/s. Of the modes only streamer's read event time, and much of its
work depends on it: an anchor's offer is reconsidered at most once per ``min_interval_s``
(5 s) of event time (an offer found unchanged waits longer each time, up to
``max_recheck_interval_s``, 60 s), so compressed event time reconsiders hot anchors far more
often per purchase than a live stream of the same rate (the engine in process, in event-time
order, the same 30,000 purchases: 65-71 us each at 100 ms, 50-57 at 1 ms, 36-53 at 0.1 ms in
two runs; with a single 5 s wait, before, 94-99 at 100 ms and the same at 1 and 0.1 ms).

Medians over repeats are printed with their ratios, and beside each ratio the same ratio within
each repeat and the median of those: a repeat's runs follow each other, so a machine that
speeds up or slows down from one repeat to the next (a shared host) moves both sides of a
per-repeat ratio alike (one checkout's worker read 3,618-6,006 events/s over the 5 repeats of
one run here). ``--json PATH`` writes both (``ratios``, ``ratios_per_repeat``). Printed and
written too: each mode's CPU per event (the consuming process's, all its threads, over the
same span; less disturbed by other load than events/s), and what reaching 0.8x the no-op
agent's rate would leave the worker per event on one core. Each streamer run also prints how
many of the machine's cores were busy over its span (every process: the broker and the
producer too; from /proc/stat), which says when a run, or two workers, had the machine to
themselves no longer.

    PYTHONPATH=. python benchmarks/throughput.py --events 10000 --repeats 3 --json tp.json

``--ref DIR`` also runs the worker of another checkout (mode ``streamer_ref``, e.g. a ``git
archive`` of the commit before a change), interleaved with ``streamer``: a before/after in one
run. ``--workers 2`` also measures two streamer workers against one (events produced after the
workers joined, for both; the warm-up first, untimed), and beside them what the machine gives
two CPU-bound processes against one (the engine in process, no broker: one alone, then two at
once) and how many cores one worker's runs kept busy (worker, broker and producer), so how many
1.7x its events/s would need at the same CPU per event; ``--only`` restricts the modes, and
``--worker-env K=V`` passes settings to the streamer worker (e.g.
``STREAMER__WORKER__LOG_LEVEL=warning``). Two workers' span ends with a drain that one
worker's does not have: the last item baskets a worker sends to the other's partitions reach
it up to one fetch wait later (the embedded broker holds a fetch of several partitions for the
whole wait, 500 ms by default), after both took their last purchase: 0.2-0.36 s of a ~1.3 s
span in 20,000-event runs (2026-12-06), 0.08-0.49 s of 7.6-8.7 s in 100,000-event runs.
Scaling in steady state wants ``--events 100000``.

The embedded broker slows down as it fills (``broker_fetch.py``): run after run, streamer's
worker, which sends two messages' worth of traffic through it per purchase (item baskets,
changelogs, offers), got slower on the one broker (9.3k events/s on the first of 6 runs, 6.5k
on the last, alone on the machine). ``--fresh-broker`` gives every run a broker of its own,
the events produced into it first: the same broker software and settings, without one run's
leftovers weighing on the next.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
TS0 = 1_700_000_000_000
MODES = ("ceiling", "plain_loop", "engine_loop", "faust_noop", "faust_noop_uvloop", "naive_peer",
         "streamer", "streamer_no_engine", "streamer_learned")
#: ``streamer_no_engine``'s worker: ``streamer worker`` with Engine.learn_baskets a no-op.
NO_ENGINE = ("import sys; from streamer.engine import Engine; "
             "Engine.learn_baskets = lambda self, baskets: ([], 0); "
             "from streamer.cli import main; sys.argv[0] = 'streamer'; main()")
RUN_TIMEOUT_S = 240.0


# -- events --------------------------------------------------------------------------------
def make_purchases(n: int, *, catalogue: int = 5000, seed: int = 1,
                   spacing_ms: float = 100.0) -> list[tuple[bytes, bytes]]:
    """``n`` purchase events (key: user id): 1-8 distinct items (mean ~2.6) drawn ~ 1/rank
    from ``catalogue`` items, ``spacing_ms`` apart in event time (whole ms: several events
    share one ms when it is below 1), fixed prices per item."""
    rng = random.Random(seed)
    ids = [f"SKU{i:06d}" for i in range(catalogue)]
    prices = {i: round(rng.uniform(1, 200), 2) for i in ids}
    cum: list[float] = []
    acc = 0.0
    for rank in range(catalogue):
        acc += 1.0 / (rank + 1)
        cum.append(acc)
    out = []
    for k in range(n):
        size = min(8, 1 + int(rng.expovariate(1 / 1.6)))
        items = list(dict.fromkeys(rng.choices(ids, cum_weights=cum, k=size)))
        user = f"u{rng.randrange(50_000)}"
        event = {
            "event_id": f"p{k}", "ts": TS0 + int(k * spacing_ms), "user_id": user,
            "session_id": f"s{k // 3}", "order_id": f"o{k}",
            "items": [{"item_id": i, "quantity": 1 + rng.randrange(2), "unit_price": prices[i]}
                      for i in items],
        }
        out.append((user.encode(), json.dumps(event, separators=(",", ":")).encode()))
    return out


async def produce(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    """Send all events and wait for every ack; returns events/s.

    Each key goes to the partition aiokafka's ``send`` would pick (its default partitioner),
    in order, but in whole record batches (``create_batch`` / ``send_batch``): 3.4-3.8 us of
    CPU per event in this process instead of 12-17 through ``send`` (one future per message;
    20,000 events, two runs each). Why it matters: streamer's timed events are produced while
    its worker runs (the faust modes read a preloaded topic), and on a 2-core machine the
    producer's CPU was taken from the worker's span, and from two workers' more."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=256 * 1024)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partition_of = DefaultPartitioner()
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in partitions}
        for key, value in events:
            by_partition[partition_of(key, partitions, partitions)].append((key, value))
        t0 = time.perf_counter()
        futures = []
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
        return len(events) / (time.perf_counter() - t0)
    finally:
        await producer.stop()


# -- in-process consumers -------------------------------------------------------------------
def plain_counting() -> Callable[[bytes], None]:
    """streamer's codec, then undecayed item and pair counts in dicts (no bounds, no offers)."""
    from streamer.events import EventCodec

    decode = EventCodec().decode_purchase
    counts: dict[str, float] = {}
    pairs: dict[str, dict[str, float]] = {}

    def work(value: bytes) -> None:
        items = list(dict.fromkeys(line.item_id for line in decode(value).items))
        for a in items:
            counts[a] = counts.get(a, 0.0) + 1.0
            row = pairs.setdefault(a, {})
            for b in items:
                if b != a:
                    row[b] = row.get(b, 0.0) + 1.0

    return work


def engine_work(batch: int = 1, flush_every: int | None = None) -> Callable[[bytes], None]:
    """streamer's codec and engine with the worker's default configuration, its state in
    dicts of encoded values as the worker's tables hold them, written back as the worker
    writes them (``WriteBuffer``: changed keys encoded once per commit interval, not on every
    assignment), logging each offer's decision and encoding it as the worker does to publish
    it. ``batch``: purchases learned together (``Engine.learn_baskets`` on their baskets, as
    an agent learns its batch), the last ones of a run left over when it does not divide.
    ``flush_every``: write back every so many purchases instead of every commit interval of
    wall time (the same work whatever the machine's speed: ``engine_regimes.py``'s
    instruction counts)."""
    from streamer.app.factory import engine_config
    from streamer.app.tables import EncodedTable
    from streamer.copurchase import Decayed, ItemStats
    from streamer.engine import Engine, EngineState
    from streamer.events import BundleOffer, EventCodec
    from streamer.events.dedup import SeenId
    from streamer.settings import Settings

    decode = EventCodec().decode_purchase
    settings = Settings()
    config = engine_config(settings)
    table: Any = EncodedTable
    flush: Callable[[], Any] | None = None
    with contextlib.suppress(ImportError):  # a checkout before write-back encoded per write
        from streamer.app.tables import WriteBuffer

        # The worker's decode caches (a checkout before the setting: the tables' default).
        cache_size = getattr(settings.worker, "table_cache_size", None)
        buffer = WriteBuffer() if cache_size is None else WriteBuffer(cache_size=cache_size)
        table, flush = buffer.table, buffer.flush
    try:  # items hold ItemRecord (stats + the ids learned) where the engine has it
        from streamer.engine import ItemRecord

        items: Any = table({}, ItemRecord)
        seen: Any = {}
    except ImportError:
        items, seen = table({}, ItemStats), table({}, SeenId)
    state = EngineState(items=items, counts=table({}, Decayed), catalog=table({}, float),
                        offers=table({}, BundleOffer), seen=seen)
    try:  # the worker logs every offer's decision and encodes it to publish it
        import msgspec

        from streamer.engine import OfferDecision

        encode = msgspec.json.Encoder().encode

        class EncodingSink:
            def add(self, decision: OfferDecision) -> None:
                encode(decision)

        options: dict[str, Any] = {"decisions": EncodingSink()}
    except ImportError:  # a checkout before the decision ledger
        options = {}
    # As the worker does: tables learned in place between flushes of the write-back.
    in_place = hasattr(Engine, "release_learned") and flush is not None
    if in_place:
        options["in_place_learning"] = True
    engine = Engine(config, state, Engine.v0_policy(config), **options)
    if in_place:
        buffer.after_flush.append(engine.release_learned)

    interval_s = settings.worker.commit_interval_s
    flushed = [time.monotonic()]

    pending: list[Any] = []
    taken = [0]

    def work(value: bytes) -> None:
        taken[0] += 1
        purchase = decode(value)  # as Engine.handle_purchase, batch purchases at a time
        if engine.accept(purchase.event_id, purchase.ts):
            pending.extend(engine.fan_out(purchase))
        if taken[0] % batch == 0:
            engine.learn_baskets(pending)
            pending.clear()
        if flush is None:
            return
        if flush_every is not None:
            if taken[0] % flush_every == 0:
                flush()
        elif time.monotonic() - flushed[0] >= interval_s:
            flush()  # the worker's offset commit writes its buffer back
            flushed[0] = time.monotonic()

    return work


def _engine_child(values: list[bytes], warm: int, start: Any, out: Any) -> None:
    """One process of :func:`machine_scaling`: the engine in process over ``values`` (the
    first ``warm`` untimed), timed from ``start`` (a barrier all the processes wait at)."""
    work = engine_work()
    for value in values[:warm]:
        work(value)
    start.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for value in values[warm:]:
        work(value)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out.put(((len(values) - warm) / wall, 1e6 * cpu / (len(values) - warm)))


def machine_scaling(events: list[tuple[bytes, bytes]], warm: int, procs: int) -> list[float]:
    """How fast each of ``procs`` processes runs the engine in process over ``events`` when
    they all run at once (purchases/s each): a CPU-bound Python process per core, no broker,
    no I/O, so what the machine itself gives N processes against one (``--workers``)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(procs), ctx.Queue()
    values = [v for _, v in events]
    children = [ctx.Process(target=_engine_child, args=(values, warm, start, out))
                for _ in range(procs)]
    for child in children:
        child.start()
    try:
        rates = [out.get(timeout=RUN_TIMEOUT_S) for _ in children]
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
    CPU_US.append(statistics.median(cpu for _, cpu in rates))
    return [eps for eps, _ in rates]


async def consume_loop(bootstrap: str, topic: str, n: int,
                       work: Callable[[bytes], None] | None, warmup: int = 0) -> float:
    """An aiokafka consumer over every partition from the start; events/s over the events
    after the first ``warmup`` (from the end of the batch that completed the warm-up; all
    ``n`` from the first fetch without one)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20,
                                fetch_max_bytes=16 << 20)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        seen = base = 0
        t0 = time.perf_counter()  # from the first fetch: one batch may hold every event
        cpu0 = time.process_time()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while seen < n and time.monotonic() < deadline:
            # Up to the end of the warm-up exactly, then large batches.
            limit = min(10_000, warmup - seen) if warmup > seen else 10_000
            batch = await consumer.getmany(timeout_ms=500, max_records=limit)
            for records in batch.values():
                if work is not None:
                    for r in records:
                        work(r.value)
                seen += len(records)
            if warmup and not base and seen >= warmup:
                base, t0, cpu0 = seen, time.perf_counter(), time.process_time()
        if seen < n or seen == base:
            raise RuntimeError(f"consumed {seen} of {n} events before the deadline")
        eps = (n - base) / (time.perf_counter() - t0)
        CPU_US.append(1e6 * (time.process_time() - cpu0) / (n - base))
        return eps
    finally:
        await consumer.stop()


# -- faust children (run by this same file) --------------------------------------------------
def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """Write a child's result atomically (a rename): a reader that sees the file sees it
    whole, with no wait for the write to finish."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)


def bench_app(name: str, bootstrap: str, **overrides: Any) -> Any:
    """A faust app for the embedded broker with faust's defaults otherwise (``overrides``
    added). Not performance settings: the changelog must match the source's 4 partitions,
    and Tansu needs short group timeouts to join quickly (startup is not timed)."""
    import faust

    return faust.App(
        f"{name}-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix=f"{name}-"),
        topic_partitions=PARTITIONS,
        broker_session_timeout=6.0,
        broker_rebalance_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        **overrides,
    )


def faust_child(mode: str, bootstrap: str, topic: str, n: int, out: str, loop: str,
                warmup: int = 0) -> None:
    """A faust worker whose one agent reads ``topic``; writes its rate over the events after
    the first ``warmup`` to ``out`` at the ``n``-th."""
    import faust

    app = bench_app(f"bench-{mode}", bootstrap)
    state = {"seen": 0, "t0": 0.0, "cpu0": 0.0}

    def count() -> None:
        if state["seen"] == warmup:  # the first event timed
            state["t0"] = time.perf_counter()
            state["cpu0"] = time.process_time()  # the whole process, all its threads
        state["seen"] += 1
        if state["seen"] == n:
            eps = (n - warmup) / (time.perf_counter() - state["t0"])
            cpu_us = 1e6 * (time.process_time() - state["cpu0"]) / (n - warmup)
            write_result(out, {"eps": eps, "cpu_us": cpu_us})
            os._exit(0)  # the measurement is written; nothing else to tear down

    if mode == "faust_noop":
        source = app.topic(topic, value_type=bytes, value_serializer="raw")

        @app.agent(source)
        async def noop(stream: Any) -> None:
            async for _ in stream:
                count()
    else:  # naive_peer: defaults (json values), one Table write per event
        source = app.topic(topic)
        per_item = app.Table("item-purchases", default=int)

        @app.agent(source)
        async def naive(stream: Any) -> None:
            async for order in stream:
                per_item[order["items"][0]["item_id"]] += 1
                count()

    kwargs: dict[str, Any] = {"loglevel": "warning"}
    if loop != "asyncio":
        kwargs["loop"] = _new_loop(loop)
    faust.Worker(app, **kwargs).execute_from_commandline()


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


class Child:
    """A subprocess in its own process group, always stopped (group-wide) on exit."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path,
                 cwd: Path | None = None) -> None:
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=f,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.log = log

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        from streamer.app.broker import stop_process_group

        stop_process_group(self.proc, 10)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_faust_child(mode: str, bootstrap: str, topic: str, n: int, workdir: Path,
                    loop: str, warmup: int = 0) -> float:
    out = workdir / f"{mode}-{uuid.uuid4().hex[:6]}.json"
    child = Child([sys.executable, __file__, "--child", mode, "--bootstrap", bootstrap,
                   "--topic", topic, "--events", str(n), "--warmup", str(warmup),
                   "--child-out", str(out), "--loop", loop],
                  child_env(), workdir / f"{mode}.log")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not out.exists():
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{mode} child failed; see {child.log}")
            time.sleep(0.05)  # waiting for the child's own measurement
        result = json.loads(out.read_text())
        CPU_US.append(float(result["cpu_us"]))
        return float(result["eps"])
    finally:
        child.stop()


# -- streamer's worker -----------------------------------------------------------------------
def worker_settings(bootstrap: str, purchases: str, workdir: Path) -> Any:
    """Default settings but fresh topics (except the shared purchases) and a fresh group.

    Default settings include the fetch wait meant for Kafka (500 ms), not the embedded broker's
    20 ms (``streamer.app.broker.EMBEDDED_FETCH_MAX_WAIT_MS``, which keeps the latency of a
    trickle low there): under a backlog the partitions being read answer at once either way,
    and the worker's others (clicks, reward topics, the offers its index follows), fetched 50
    times a second at 20 ms, cost an idle worker 0.1 of a core and the broker, which shares the
    machine, 0.3 (``benchmarks/fetch_wait.py``)."""
    from streamer.app.broker import free_port
    from streamer.settings import Settings

    suffix = uuid.uuid4().hex[:8]
    topics = {name: f"{name}-{suffix}" for name in
              ("clicks", "offers", "feedback", "rewards", "dead_letters")}
    return Settings(
        kafka={"bootstrap_servers": bootstrap},
        topics=topics | {"purchases": purchases, "policy_updates": f"policy-updates-{suffix}",
                         "partitions": PARTITIONS},
        worker={"app_id": f"bench-streamer-{suffix}", "web_port": free_port(),
                "data_dir": str(workdir / f"data-{suffix}")},
    )


def settings_env(settings: Any, extra: dict[str, str]) -> dict[str, str]:
    """The child's environment: the settings that differ from their defaults (so that a
    ``--ref`` checkout that lacks a newer setting still starts, with its own defaults)."""
    env = child_env()
    for section, values in settings.model_dump(mode="json", exclude_defaults=True).items():
        for key, value in values.items():
            if value is not None:
                env[f"STREAMER__{section.upper()}__{key.upper()}"] = str(value)
    env.update(extra)
    return env


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read())
    except OSError:
        return b""


class StreamerWorker:
    def __init__(self, settings: Any, workdir: Path, extra_env: dict[str, str],
                 web_port: int | None = None, code: Path | None = None,
                 engine: bool = True) -> None:
        if web_port is not None:
            settings = settings.model_copy(update={"worker": settings.worker.model_copy(
                update={"web_port": web_port})})
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.worker.web_port}"
        env = settings_env(settings, extra_env)
        if code is not None:  # another checkout's streamer (``-m`` puts the cwd first too)
            env["PYTHONPATH"] = str(code)
        program = ["-m", "streamer"] if engine else ["-c", NO_ENGINE]
        self.child = Child([sys.executable, *program, "worker"], env,
                           workdir / f"worker-{settings.worker.app_id}.log", cwd=code)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the worker process has used so far."""
        fields = Path(f"/proc/{self.child.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, Any]:
        raw = _get(f"{self.url}/stats/")
        return json.loads(raw) if raw else {}

    def consumed(self) -> float:
        by_topic = self.stats().get("streamer_events_consumed_total", {})
        return float(by_topic.get(self.settings.topics.purchases, 0.0))

    def baskets_consumed(self) -> float:
        """Item baskets learned (each purchase fans out to one per item, plus one for the
        order counter), through the item-baskets topic or in place; a worker older than
        ``streamer_baskets_learned`` (a ``--ref`` checkout): those its items agent took."""
        stats = self.stats()
        learned = stats.get("streamer_baskets_learned_total")
        if learned is not None:
            return float(sum(learned.values()))
        by_topic = stats.get("streamer_events_consumed_total", {})
        return float(by_topic.get(f"{self.settings.worker.app_id}-item-baskets", 0.0))

    def baskets_lag(self) -> float | None:
        """Item-baskets lag summed over this worker's partitions (None: not known yet)."""
        text = _get(f"{self.url}/metrics").decode()
        name = re.escape(f"{self.settings.worker.app_id}-item-baskets")
        m = re.search(r'streamer_consumer_lag\{topic="' + name + r'"\} (\S+)', text)
        return float(m.group(1)) if m else None


#: The issue's goal for 2 workers against 1 (events/s).
WORKERS_GOAL = 1.7

#: CPU per event of each run (the consuming process's, all its threads, first event to last):
#: more robust to other load on the machine than events/s.
CPU_US: list[float] = []
#: Cores the whole machine kept busy (every process: the broker and the producer too) over the
#: same spans, when /proc/stat tells (Linux); appended beside CPU_US by wait_done.
MACHINE_BUSY: list[float | None] = []
CPU_BY_MODE: dict[str, list[float]] = {}  # CPU_US by mode


def machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (None: not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # guest time is counted in user already


def machine_note() -> str:
    """The machine's busy cores over the last timed span, for a run's line ("" if unknown)."""
    busy = MACHINE_BUSY[-1] if MACHINE_BUSY else None
    MACHINE_BUSY.clear()
    return "" if busy is None else f"; machine {busy:.2f} of {os.cpu_count()} cores busy"


def busy_cores(since: tuple[int, int] | None) -> float | None:
    """Cores kept busy on average since ``since`` (a :func:`machine_jiffies`)."""
    now = machine_jiffies()
    if since is None or now is None or now[1] <= since[1]:
        return None
    return (now[0] - since[0]) / (now[1] - since[1]) * (os.cpu_count() or 1)


def item_baskets(events: list[tuple[bytes, bytes]]) -> int:
    """How many item baskets the purchases fan out to: one per distinct item, one per order."""
    return sum(len({line["item_id"] for line in json.loads(v)["items"]}) + 1 for _, v in events)


def check_running(workers: list[StreamerWorker], t_limit: float) -> None:
    """Raise when a worker died or ``t_limit`` (``time.monotonic``) has passed."""
    if time.monotonic() > t_limit or not all(w.child.alive() for w in workers):
        raise RuntimeError(f"streamer worker failed or timed out; see {workers[0].child.log}")


def wait_done(workers: list[StreamerWorker], n: int, t_limit: float,
              baskets: int | None = None,
              started: tuple[float, float, tuple[int, int] | None] | None = None,
              base: int = 0) -> float:
    """Poll until the workers consumed n purchases and drained item-baskets; events/s over
    the purchases after the first ``base`` (consumed before the span: a warm-up).
    Appends the workers' CPU microseconds per such event over the same span to ``CPU_US``,
    and the cores the machine kept busy meanwhile to ``MACHINE_BUSY``.

    The span starts at ``started`` (``perf_counter``, the workers' CPU seconds and
    :func:`machine_jiffies` then), by default :func:`wait_started`'s: right before the workers
    took the first purchase after ``base``, read within 5 ms. Why not at the first 100 ms poll
    that finds some taken: the work done before it was counted without its time (1.01-1.02x
    the true rate of a simulated worker). Polls come every 100 ms, every 20 ms once the rate
    so far says the end is near.

    Drained: the items agents took ``baskets`` item baskets when that is given. Else their
    item-baskets lag read zero twice; a stale high-water mark (the items consumer has not
    fetched since the purchases agent sent) reads zero too early, so that ended some runs
    before the items agent had done its work (a profile without it, ~95 us/event)."""
    t0, cpu0, machine0 = started if started is not None else wait_started(workers, base, t_limit)
    timed = n - base

    def done(now: float) -> float:
        CPU_US.append(1e6 * (sum(w.cpu_s() for w in workers) - cpu0) / timed)
        MACHINE_BUSY.append(busy_cores(machine0))
        return timed / (now - t0)

    while True:
        check_running(workers, t_limit)
        now = time.perf_counter()
        consumed = sum(w.consumed() for w in workers)
        if consumed >= n:
            break
        # Each poll costs the worker ~1 ms of CPU: every 100 ms while it works, every 20 ms
        # once at the rate so far less than 100 ms of work is left, so the end is read at
        # most ~20 ms late.
        left = (n - consumed) * (now - t0) / max(consumed - base, 1)
        time.sleep(0.02 if left < 0.1 else 0.1)
    while baskets is not None:
        if time.monotonic() > t_limit:
            raise RuntimeError("item-baskets never drained")
        now = time.perf_counter()
        if sum(w.baskets_consumed() for w in workers) >= baskets:
            return done(now)
        time.sleep(0.02)
    while True:
        if time.monotonic() > t_limit:
            raise RuntimeError("item-baskets never drained")
        now = time.perf_counter()
        lags = [w.baskets_lag() for w in workers]
        if all(lag == 0 for lag in lags):
            time.sleep(0.1)  # a lag of 0 may be a stale high-water mark: confirm once
            if all(w.baskets_lag() == 0 for w in workers):
                return done(now)
        else:
            time.sleep(0.1)


def py_spy() -> str | None:
    """py-spy beside the interpreter, else the one on PATH; None without one (``--profile``
    refuses to start then: ``pip install -e '.[bench]'``)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def run_streamer(bootstrap: str, topic: str, n: int, workdir: Path,
                 extra_env: dict[str, str], profile: Path | None = None,
                 code: Path | None = None, baskets: int | None = None,
                 engine: bool = True,
                 warmup: tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]
                 | None = None, learned: bool = False) -> float:
    """One worker on ``topic``'s ``n`` purchases (``baskets`` item baskets); events/s.

    ``warmup`` (warm-up events, timed events): instead, a topic of its own gets the warm-up
    events, the worker takes them all (and learns their baskets) untimed, then the timed
    events are produced and timed from then on, as in :func:`run_scaled`. ``learned``: the
    worker serves a learned policy (:func:`publish_learned_policy`), adopted before timing."""
    from streamer.app.broker import create_topics
    from streamer.app.worker import ensure_topics

    if warmup is not None:
        topic = f"purchases-warm-{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topics(bootstrap, [topic], partitions=PARTITIONS))
        asyncio.run(produce(bootstrap, topic, warmup[0]))
    settings = worker_settings(bootstrap, topic, workdir)
    asyncio.run(ensure_topics(settings))
    version = asyncio.run(publish_learned_policy(settings)) if learned else None
    worker = StreamerWorker(settings, workdir, extra_env, code=code, engine=engine)
    spy = None
    try:
        if profile is not None:
            # From the moment the web server answers: start-up imports are not profiled.
            deadline = time.monotonic() + 60
            while not worker.stats() and worker.child.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            spy = subprocess.Popen(
                [py_spy() or "py-spy", "record", "-o", str(profile),
                 "-f", {".json": "speedscope", ".txt": "raw"}.get(profile.suffix, "flamegraph"),
                 "-r", "200", "-p", str(worker.child.proc.pid),
                 *os.environ.get("PY_SPY_ARGS", "").split()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        limit = time.monotonic() + RUN_TIMEOUT_S
        if version is not None:
            wait_adopted(worker, version, limit)
        if warmup is not None:
            rate = time_after_warmup([worker], bootstrap, topic, *warmup, limit)
        else:
            rate = wait_done([worker], n, limit, baskets)
        routes = worker.stats().get("streamer_baskets_learned_total") or {}
        if routes.get("local"):  # the purchases agent learned these in place
            share = routes["local"] / sum(routes.values())
            print(f"    item baskets learned in place: {share:.0%}")
        return rate
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        worker.child.stop()


async def publish_learned_policy(settings: Any) -> str:
    """Publish a learned policy version to the worker's ``policy-updates`` topic, as the
    trainer promotes one; returns its version."""
    from aiokafka import AIOKafkaProducer

    from streamer.app.kafka import aiokafka_kwargs
    from streamer.online import FEATURE_NAMES
    from streamer.policy import TorchPolicy, policy_to_bytes

    policy = TorchPolicy.initial(FEATURE_NAMES, seed=0)
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings.kafka))
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.policy_updates,
                                     policy_to_bytes(policy, {"benchmark": "throughput"}),
                                     key=b"policy")
    finally:
        await producer.stop()
    return str(policy.version)


def wait_adopted(worker: StreamerWorker, version: str, t_limit: float) -> None:
    """Until ``worker`` serves ``version`` (its policy follower counted the adoption)."""
    while version not in (worker.stats().get("streamer_policy_adoptions_total") or {}):
        if not worker.child.alive() or time.monotonic() > t_limit:
            raise RuntimeError(f"the worker did not adopt policy {version}; see "
                               f"{worker.child.log}")
        time.sleep(0.1)  # polling the worker's stats page


def wait_started(workers: list[StreamerWorker], base: int, t_limit: float,
                 producing: concurrent.futures.Future[Any] | None = None,
                 ) -> tuple[float, float, tuple[int, int] | None]:
    """Poll the idle workers every 5 ms until they have consumed more than ``base`` purchases;
    returns ``perf_counter``, their CPU seconds and :func:`machine_jiffies` as read right after
    the last poll that found none of those yet: the start of a span timed by
    :func:`wait_done`. ``producing``: the production of the events, whose failure is raised
    at once (nothing would come)."""
    def stamp() -> tuple[float, float, tuple[int, int] | None]:
        return time.perf_counter(), sum(w.cpu_s() for w in workers), machine_jiffies()

    last = stamp()
    while sum(w.consumed() for w in workers) <= base:
        last = stamp()
        check_running(workers, t_limit)
        if producing is not None and producing.done() and producing.exception() is not None:
            producing.result()  # raises what the production raised
        time.sleep(0.005)
    return last


def time_after_warmup(workers: list[StreamerWorker], bootstrap: str, topic: str,
                      warm: list[tuple[bytes, bytes]], timed: list[tuple[bytes, bytes]],
                      t_limit: float) -> float:
    """events/s of ``timed``: the ``warm`` events (already in ``topic``, possibly none) are
    taken and their baskets learned first, untimed; then ``timed`` is produced (in a thread)
    and timed from the moment the workers take the first of them (:func:`wait_started`,
    :func:`wait_done`)."""
    warm_baskets = item_baskets(warm)
    if warm:
        wait_done(workers, len(warm), t_limit, warm_baskets)
        CPU_US.pop()  # the warm-up's, not reported
        MACHINE_BUSY.pop()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        producing = pool.submit(asyncio.run, produce(bootstrap, topic, timed))
        started = wait_started(workers, len(warm), t_limit, producing)
        producing.result()
    return wait_done(workers, len(warm) + len(timed), t_limit,
                     warm_baskets + item_baskets(timed), started, len(warm))


def run_scaled(bootstrap: str, n: int, workers: int, workdir: Path,
               extra_env: dict[str, str], warmup: int = 0, spacing_ms: float = 100.0) -> float:
    """``workers`` streamer workers in one group, joined before the events are produced;
    ``warmup`` events first, untimed, all taken and learned before the ``n`` timed ones."""
    from streamer.app.broker import free_port
    from streamer.app.worker import ensure_topics

    topic = f"purchases-scale-{uuid.uuid4().hex[:8]}"
    settings = worker_settings(bootstrap, topic, workdir)
    asyncio.run(ensure_topics(settings))
    procs = [StreamerWorker(settings, workdir, extra_env, web_port=free_port())
             for _ in range(workers)]
    try:
        deadline = time.monotonic() + 90
        while not all(w.stats().get("ready") for w in procs):
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready")
            time.sleep(0.2)
        time.sleep(8.0)  # let the group settle: the last join triggers one more rebalance
        events = make_purchases(warmup + n, seed=2, spacing_ms=spacing_ms)
        if warmup:
            asyncio.run(produce(bootstrap, topic, events[:warmup]))
        return time_after_warmup(procs, bootstrap, topic, events[:warmup], events[warmup:],
                                 time.monotonic() + RUN_TIMEOUT_S)
    finally:
        for w in procs:
            w.child.stop()


# -- driver -----------------------------------------------------------------------------------
def per_repeat(top: list[float], base: list[float]) -> list[float]:
    """``top[i] / base[i]`` for each repeat: two runs of one repeat, made one after the other
    (other modes may run between), so a machine that slows down or speeds up from repeat to
    repeat (other jobs on a shared host) moves both."""
    return [t / b for t, b in zip(top, base, strict=True)]


def ratio_of(top: list[float], base: list[float]) -> tuple[float, list[float]]:
    """The ratio of the medians of two sets of runs, and the ratio within each repeat."""
    return statistics.median(top) / statistics.median(base), per_repeat(top, base)


def describe_pairs(ratios: list[float]) -> str:
    """Per-repeat ratios and their median, for a ratio's line.

    >>> describe_pairs([1.5, 0.9, 1.2])
    'per repeat 1.50, 0.90, 1.20x; median 1.20x'
    """
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return f"per repeat {each}x; median {statistics.median(ratios):.2f}x"


#: The default warm-up never exceeds this many events (see :func:`steady_warmup`).
MAX_DEFAULT_WARMUP = 100_000
#: Events past the attribution horizon before the timed ones (see :func:`steady_warmup`).
SETTLE_EVENTS = 20_000
#: The default warm-up where the steady state is out of reach (see :func:`steady_warmup`).
START_WARMUP = 10_000


def attribution_horizon_s() -> float:
    """Event time a purchase's attribution state lives (the worker's default attribution
    window plus its allowed lateness): sessions start closing this long into a stream."""
    from streamer.settings import RewardSettings

    rewards = RewardSettings()
    return rewards.attribution_window_s + rewards.allowed_lateness_s


def steady_warmup(spacing_ms: float) -> tuple[int, bool]:
    """The default warm-up for purchases ``spacing_ms`` apart in event time, and whether it
    reaches the worker's steady state.

    The worker's attribution keeps every purchase's session until the watermark passes its
    window (:func:`attribution_horizon_s`, 2,100 s by default); from then on, for each session
    a purchase opens an older one closes (a table write and a delete per purchase, the
    closing itself), and the offers' back-off and the partner tables settle over the next few
    thousand. The worker's CPU per purchase rose from 80-100 us at 10-30k purchases into a
    stream at 100 ms spacing to 110-160 us from ~40k on and stayed there to 200k (2026-12-06,
    5,000-purchase windows): a 10,000-event warm-up timed the cheap start. So the warm-up
    spans the horizon plus :data:`SETTLE_EVENTS` (41,000 events at 100 ms), or, when that
    exceeds :data:`MAX_DEFAULT_WARMUP` (a live stream's spacing: 0.1 ms would need 21
    million), :data:`START_WARMUP` events that do not reach it.

    >>> steady_warmup(100.0)
    (41000, True)
    >>> steady_warmup(0.1)
    (10000, False)
    """
    if spacing_ms > 0:
        needed = math.ceil(attribution_horizon_s() * 1000 / spacing_ms) + SETTLE_EVENTS
        if needed <= MAX_DEFAULT_WARMUP:
            return needed, True
    return START_WARMUP, False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000, help="events timed")
    p.add_argument("--warmup", type=int, default=None,
                   help="events consumed before the timed ones, untimed (0: time from the "
                        "first event, start-up transients included). Default: enough for the "
                        "worker's steady state (steady_warmup), at most "
                        f"{MAX_DEFAULT_WARMUP:,}")
    p.add_argument("--event-spacing-ms", type=float, default=100.0, metavar="MS",
                   help="event time between two purchases (100: a replay compressed ~1000x; "
                        "0.1: a live stream of 10k purchases/s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--only", default=",".join(MODES), help="comma-separated modes to run")
    p.add_argument("--workers", type=int, default=1, help="also compare N streamer workers")
    p.add_argument("--worker-env", action="append", default=[], metavar="K=V")
    p.add_argument("--ref", type=Path, default=None, metavar="DIR",
                   help="also run the worker of another checkout (e.g. `git archive` of the "
                        "commit before a change) as mode streamer_ref, interleaved")
    p.add_argument("--fresh-broker", action="store_true",
                   help="a fresh broker (the events produced into it) for every run, instead "
                        "of one for the whole benchmark: the embedded broker slows down as "
                        "it fills (benchmarks/broker_fetch.py)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="event loop of the faust children (noop and naive peer)")
    p.add_argument("--profile", type=Path, default=None,
                   help="py-spy the first streamer run into this file "
                        "(.svg, .json speedscope, .txt collapsed stacks)")
    p.add_argument("--child", choices=("faust_noop", "naive_peer"), help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.warmup is None and not args.child:
        args.warmup, steady = steady_warmup(args.event_spacing_ms)
        if not steady:
            print(f"note: at {args.event_spacing_ms:g} ms apart, the warm-up of "
                  f"{args.warmup:,} events does not reach the worker's steady state (sessions "
                  f"closing as fast as they open, after {attribution_horizon_s():,.0f} s of "
                  "event time): the timed span is a live stream's first minutes", flush=True)
    if args.profile is not None and py_spy() is None:
        p.error("--profile needs py-spy: pip install -e '.[bench]'")
    if args.warmup < 0 or args.events < 1 or not args.event_spacing_ms >= 0:
        p.error("--warmup and --event-spacing-ms must be >= 0 and --events >= 1")
    if args.child:
        faust_child(args.child, args.bootstrap, args.topic, args.events, args.child_out,
                    args.loop, args.warmup)
        return

    from streamer.app.broker import EmbeddedBroker, create_topics

    modes = [m for m in args.only.split(",") if m]
    if args.ref is not None:
        modes.insert(modes.index("streamer") if "streamer" in modes else len(modes),
                     "streamer_ref")
    extra_env = dict(kv.split("=", 1) for kv in args.worker_env)
    n = args.events
    warm = args.warmup
    total = warm + n  # produced; the first ``warm`` are consumed untimed
    results: dict[str, list[float]] = {m: [] for m in modes}
    events = make_purchases(total, spacing_ms=args.event_spacing_ms)
    baskets = item_baskets(events)
    warmup = (events[:warm], events[warm:]) if warm else None
    sizes = [len(v) for _, v in events]

    def run_mode(mode: str, rep: int, broker: Any, topic: str, workdir: Path) -> float:
        if mode == "ceiling":
            eps = asyncio.run(consume_loop(broker.bootstrap, topic, total, None, warm))
        elif mode == "plain_loop":
            eps = asyncio.run(consume_loop(broker.bootstrap, topic, total, plain_counting(),
                                           warm))
        elif mode == "engine_loop":
            eps = asyncio.run(consume_loop(broker.bootstrap, topic, total, engine_work(),
                                           warm))
        elif mode in ("faust_noop", "naive_peer"):
            eps = run_faust_child(mode, broker.bootstrap, topic, total, workdir, args.loop,
                                  warm)
        elif mode == "faust_noop_uvloop":
            # The no-op agent on the worker's own event loop (run_worker installs uvloop):
            # faust's floor on equal terms; faust_noop runs on --loop, faust's default.
            eps = run_faust_child("faust_noop", broker.bootstrap, topic, total, workdir,
                                  "uvloop", warm)
        else:
            profile = args.profile if rep == 0 and mode == "streamer" else None
            code = args.ref.resolve() if mode == "streamer_ref" else None
            eps = run_streamer(broker.bootstrap, topic, total, workdir, extra_env, profile,
                               code, baskets, engine=mode != "streamer_no_engine",
                               warmup=warmup, learned=mode == "streamer_learned")
        CPU_BY_MODE.setdefault(mode, []).append(CPU_US[-1])
        return eps

    announced: list[bool] = []

    @contextlib.contextmanager
    def loaded_broker(workdir: Path, name: str) -> Any:
        """A broker (``name`` for its log) holding the events in a fresh topic."""
        with EmbeddedBroker(log_path=workdir / f"broker-{name}.log") as broker:
            topic = f"purchases-bench-{uuid.uuid4().hex[:8]}"
            asyncio.run(create_topics(broker.bootstrap, [topic], partitions=PARTITIONS))
            produced = asyncio.run(produce(broker.bootstrap, topic, events))
            if not announced:
                announced.append(True)
                print(f"{total} purchases ({warm} untimed, then {n} timed; "
                      f"{statistics.mean(sizes):.0f} B mean; {args.event_spacing_ms:g} ms "
                      f"apart in event time) produced at "
                      f"{produced:,.0f}/s to {topic} ({PARTITIONS} partitions) on "
                      f"{broker.bootstrap}" + (", a fresh broker per run" if args.fresh_broker
                                               else ""))
            yield broker, topic

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="bench-throughput-")))
        # One broker for every run, unless each run gets its own (--fresh-broker).
        shared = None if args.fresh_broker else stack.enter_context(
            loaded_broker(workdir, "shared"))

        def broker_for(name: str) -> Any:
            return loaded_broker(workdir, name) if shared is None else \
                contextlib.nullcontext(shared)

        for rep in range(args.repeats):
            # Every other repeat runs the modes in reverse: whatever runs first or later in a
            # repeat (the broker's state grows with every run's changelogs) is not always the
            # same mode. Measured before: with streamer_ref always just before streamer, the
            # same pair of checkouts read 0.88-0.91x one way round and 0.94x the other.
            for mode in modes if rep % 2 == 0 else modes[::-1]:
                with broker_for(f"{mode}-{rep}") as (broker, topic):
                    eps = run_mode(mode, rep, broker, topic, workdir)
                results[mode].append(eps)
                cpu = f"  ({CPU_US[-1]:,.1f} us CPU/event"
                cpu += (machine_note() if mode.startswith("streamer") else "") + ")"
                print(f"  repeat {rep + 1}: {mode:<18} {eps:>11,.0f} events/s{cpu}", flush=True)
        scaled: dict[int, list[float]] = {}
        scaled_busy: dict[int, list[float]] = {}  # the machine's busy cores, each such run
        engines: dict[int, list[float]] = {}  # machine_scaling: purchases/s in all, each run
        if args.workers > 1:
            for rep in range(args.repeats):
                for w in (1, args.workers):
                    # run_scaled produces into a topic of its own: no events to preload.
                    with (EmbeddedBroker(log_path=workdir / f"broker-scaled-{w}-{rep}.log")
                          if shared is None else contextlib.nullcontext(shared[0])) as broker:
                        eps = run_scaled(broker.bootstrap, n, w, workdir, extra_env, warm,
                                         args.event_spacing_ms)
                    scaled.setdefault(w, []).append(eps)
                    if MACHINE_BUSY and MACHINE_BUSY[-1] is not None:
                        scaled_busy.setdefault(w, []).append(MACHINE_BUSY[-1])
                    print(f"  {w} worker(s), produced while running: {eps:,.0f} events/s"
                          f"  ({CPU_US.pop():,.0f} us CPU/event, all workers"
                          f"{machine_note()})", flush=True)
                for w in (1, args.workers):
                    # The machine's own scaling, beside the workers': the engine in process,
                    # alone and in as many processes as workers at once.
                    rates = machine_scaling(events, warm, w)
                    engines.setdefault(w, []).append(sum(rates))
                    each = ", ".join(f"{r:,.0f}" for r in rates)
                    print(f"  {w} engine process(es) at once, in process (no broker): "
                          f"{sum(rates):,.0f} purchases/s in all ({each}; "
                          f"{CPU_US.pop():,.0f} us CPU/purchase)", flush=True)

    med = {m: statistics.median(v) for m, v in results.items()}
    print(f"\nmedians over {args.repeats} repeats, {n} events timed after {warm}:")
    for m, v in med.items():
        runs = ", ".join(f"{x:,.0f}" for x in results[m])
        print(f"  {m:<18} {v:>11,.0f} events/s   (runs: {runs})")
    pairs = [("streamer", base) for base in ("streamer_ref", "naive_peer", "faust_noop",
                                             "faust_noop_uvloop", "engine_loop", "plain_loop",
                                             "ceiling")]
    pairs += [("streamer_learned", "streamer"), ("streamer_learned", "naive_peer"),
              ("streamer_no_engine", "naive_peer"), ("streamer_no_engine", "faust_noop"),
              ("naive_peer", "faust_noop")]
    ratios: dict[str, float] = {}
    paired: dict[str, list[float]] = {}
    for top, base in pairs:
        if top in med and base in med:
            name = f"{top}/{base}"
            ratios[name], paired[name] = ratio_of(results[top], results[base])
    goals = {"streamer/naive_peer": 3.0, "streamer/faust_noop": 0.8}
    if paired:
        print("  ratios of the medians; in brackets the ratio within each repeat (its runs "
              "one after the other), and their median")
    for name, r in ratios.items():
        goal = f"   (goal >= {goals[name]})" if name in goals else ""
        print(f"  {name:<32} {r:6.2f}x{goal}   [{describe_pairs(paired[name])}]")
    out: dict[str, Any] = {"events": n, "warmup": warm, "fresh_broker": args.fresh_broker,
                           "event_spacing_ms": args.event_spacing_ms}
    for m in modes:
        out[f"{m}_eps"] = med[m]
    if scaled:
        one, many = statistics.median(scaled[1]), statistics.median(scaled[args.workers])
        ratio, paired["workers"] = ratio_of(scaled[args.workers], scaled[1])
        print(f"  {args.workers} workers / 1 worker: {ratio:.2f}x   (goal >= {WORKERS_GOAL})  "
              f"[{many:,.0f} vs {one:,.0f} events/s; {describe_pairs(paired['workers'])}]")
        out[f"streamer_{args.workers}_workers_eps"] = many
        out["streamer_1_worker_produced_live_eps"] = one
        if scaled_busy.get(1):
            # Where the goal lies in cores: one worker's run keeps the worker, the broker and
            # the producer busy, and each of them works per event, so 1.7x the events/s at the
            # same cost per event keeps 1.7x as many cores busy (at least: with more workers
            # more item baskets cross the item-baskets topic).
            busy = statistics.median(scaled_busy[1])
            cores = os.cpu_count() or 1
            need = WORKERS_GOAL * busy
            print(f"  one worker's runs kept {busy:.2f} of {cores} cores busy (worker, broker and "
                  f"producer; median): {WORKERS_GOAL}x its events/s at the same CPU per event "
                  f"needs at least {need:.2f}"
                  + (", more than this machine has" if need > cores else ""))
            out["one_worker_busy_cores"] = busy
            out["workers_goal_needs_cores"] = need
        if engines.get(1):
            machine, paired["machine"] = ratio_of(engines[args.workers], engines[1])
            print(f"  the machine itself: {args.workers} engine processes at once / 1 alone "
                  f"(in process, no broker): {machine:.2f}x   "
                  f"[{describe_pairs(paired['machine'])}]")
            out[f"engine_{args.workers}_processes_eps"] = statistics.median(engines[args.workers])
            out["engine_1_process_eps"] = statistics.median(engines[1])
    cpu = {m: statistics.median(v) for m, v in CPU_BY_MODE.items()}
    if cpu:
        print("  CPU per event (medians; the consuming process, all threads):")
    for m, us in cpu.items():
        out[f"{m}_cpu_us_per_event"] = us
        print(f"    {m:<18} {us:>7,.1f} us" + (f"   ({args.ref})" if m == "streamer_ref" else ""))
    if "faust_noop" in med and "streamer" in cpu:
        # Where the goal lies in CPU: the worker is one process, so at 0.8x the no-op agent's
        # rate it has 1 / (0.8 x that rate) of one core per event.
        budget = 1e6 / (0.8 * med["faust_noop"])
        parts = [f"without its engine {cpu['streamer_no_engine']:,.0f}"
                 if "streamer_no_engine" in cpu else "",
                 f"its engine alone in a plain loop {cpu['engine_loop']:,.0f}"
                 if "engine_loop" in cpu else ""]
        detail = "; ".join(p for p in parts if p)
        print(f"  at 0.8x faust_noop ({0.8 * med['faust_noop']:,.0f} events/s) one core "
              f"allows {budget:,.0f} us per event; streamer's worker spends "
              f"{cpu['streamer']:,.0f}" + (f" ({detail})" if detail else ""))
        out["goal_cpu_budget_us_per_event"] = budget
    out["runs"] = results
    out["ratios"] = ratios
    out["ratios_per_repeat"] = paired
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
