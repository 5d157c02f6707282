"""faust's per-message cost with its stock consumer and with streamer's FastConsumer, one run.

One command starts the embedded broker (Tansu, 127.0.0.1), produces ``--events`` synthetic
purchases once (``benchmarks/throughput.py``'s generator) to a 4-partition topic, then runs a
faust worker with one no-op agent on them for every variant, ``--repeats`` times, interleaved
(so load from other jobs on the machine spreads over all variants). Each run is a child process
with a fresh consumer group reading from the start, set up like ``streamer worker``: uvloop's
policy, log level warning, no spinner, at-least-once, Tansu's short group timeouts.

Each child times itself from its first event to its last: events/s (wall clock) and CPU
microseconds per event (the whole process, aiokafka's consumer thread included, over the same
span). CPU per event is the steadier figure on a shared machine. Start-up and the group join
are not timed.

Variants (``--variants``, comma-separated; ``all`` for every one):

- ``stock``: faust's consumer, default settings;
- ``fast``: :func:`streamer.app.fast_consumer.install_fast_consumer`, default settings;
- ``stock_buf16k`` / ``fast_buf16k``: ``stream_buffer_maxsize=16384`` (default 4096);
- ``fast_poll500``: ``broker_max_poll_records=500`` (default: no limit);
- ``fast_fetch4m``: ``consumer_max_fetch_size=4 MiB`` (default 1 MiB);
- ``fast_nowait``: ``stream_wait_empty=False`` (only matters on rebalance/stop);
- ``fast_asyncio``: the fast consumer on asyncio's loop instead of uvloop;
- ``fast_wire``: the fast consumer, the topic with streamer's ``WireSchema`` (keys and values as
  they came, the event made directly) instead of faust's raw value serializer.

    PYTHONPATH=. python benchmarks/faust_consumer.py --events 20000 --repeats 5

measured here (2 shared cores): stock 11.4k events/s and 55.7 us CPU/event, fast 26.7k events/s
and 24.5 us CPU/event (2.34x the rate, 2.28x less CPU). ``--variants all`` (3 repeats): no
setting lever moved the CPU per event beyond the noise (+-3 us): a 16k stream buffer, 500 poll
records, 4 MiB fetches, ``stream_wait_empty=False``, asyncio's loop instead of uvloop.

With the topic as the worker has it (``--variants fast,fast_wire --repeats 10``, a slower day:
the fast consumer at 61.0 us CPU/event): ``fast_wire`` 46.1 us and 1.32x the events/s. In
process, faust's decoding of a message took 4.4-5.0 us and WireSchema's 0.55-0.65.

``--profile DIR`` runs py-spy (500 Hz, only the thread holding the GIL: CPU, not waits) on the
first run of each variant, into
``DIR/<variant>.svg``; with ``--profile-format raw`` (collapsed stacks, ``DIR/<variant>.txt``) it
also prints where each variant's CPU per event goes, by category (faust's drain loop, conductor,
agent, event loop, aiokafka's thread). The profiled run is slower than the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.throughput import (
    PARTITIONS,
    RUN_TIMEOUT_S,
    Child,
    bench_app,
    child_env,
    make_purchases,
    produce,
    py_spy,
    write_result,
)

#: name -> (fast consumer?, event loop, faust settings on top of the worker's)
VARIANTS: dict[str, tuple[bool, str, dict[str, Any]]] = {
    "stock": (False, "uvloop", {}),
    "fast": (True, "uvloop", {}),
    "stock_buf16k": (False, "uvloop", {"stream_buffer_maxsize": 16384}),
    "fast_buf16k": (True, "uvloop", {"stream_buffer_maxsize": 16384}),
    "fast_poll500": (True, "uvloop", {"broker_max_poll_records": 500}),
    "fast_fetch4m": (True, "uvloop", {"consumer_max_fetch_size": 4 << 20}),
    "fast_nowait": (True, "uvloop", {"stream_wait_empty": False}),
    "fast_asyncio": (True, "asyncio", {}),
    "fast_wire": (True, "uvloop", {}),
}

#: Variants whose topic hands messages over as streamer's worker does (WireSchema: the bytes
#: as they came, no decoding by faust); the others decode with faust's raw value serializer.
WIRE_VARIANTS = {"fast_wire"}

PROFILE_FORMATS = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}

#: Where a sample's CPU goes: the first category with a frame matching one of its patterns.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("(start-up, not timed)", ("_find_and_load", "venusian", "App.agent.<locals>._inner",
                               "install_fast_consumer", "Service.start", "on_rebalance",
                               "_on_partitions_assigned")),
    ("conductor: decode key and value", ("Schema.compile.<locals>.decode",)),
    ("conductor: create_event", ("App.create_event",)),
    ("conductor: wait_until_producer_ebb", ("ProducerBuffer.wait_until_ebb",)),
    ("conductor: queue put", ("put_nowait_enhanced", "force_put_nowait")),
    ("conductor: track_message, sensors", ("track_message", "SensorDelegate.on_message_in")),
    ("conductor: the rest", ("Conductor._compile_message_handler.<locals>.on_message",)),
    ("drain: wait_first (tasks, asyncio.wait)", ("Service.wait_first",)),
    ("drain: getmany (records, to_message)", ("Consumer.getmany",)),
    ("drain: the loop, _deliver", ("_drain_messages",)),
    ("agent: channel get", ("Channel.__anext__",)),
    ("agent: stream sensors", ("SensorDelegate.on_stream_event", "SensorDelegate.on_message_out")),
    ("agent: stream iterator, ack", ("Stream._c_aiter",)),
    ("agent: the no-op body", ("noop",)),
    ("aiokafka thread", ("Thread._bootstrap",)),
    ("event loop (uvloop: task steps, callbacks)", ("Worker.execute_from_commandline",)),
]


def breakdown(collapsed: Path, cpu_us: float) -> dict[str, float]:
    """CPU microseconds per event by category: each category's share of the timed samples of
    a py-spy ``raw`` profile, times the CPU per event measured in that run."""
    samples: dict[str, int] = {}
    for line in collapsed.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        name = next((c for c, patterns in CATEGORIES if any(p in stack for p in patterns)),
                    "other")
        samples[name] = samples.get(name, 0) + int(count)
    samples.pop(CATEGORIES[0][0], None)
    total = sum(samples.values()) or 1
    return {c: cpu_us * n / total for c, n in sorted(samples.items(), key=lambda kv: -kv[1])}


# -- the faust child (run by this same file) --------------------------------------------------
def faust_child(variant: str, bootstrap: str, topic: str, n: int, out: str) -> None:
    """A faust worker whose one no-op agent reads ``topic``; writes its figures to ``out``."""
    import faust

    fast, loop, overrides = VARIANTS[variant]
    if loop == "uvloop":
        import uvloop

        uvloop.install()  # as streamer's worker does (streamer.app.worker._install_uvloop)
    # at_least_once: Tansu rejects the idempotent producer of exactly_once.
    app = bench_app(f"bench-consumer-{variant}", bootstrap,
                    processing_guarantee="at_least_once", **overrides)
    if fast:
        from streamer.app.fast_consumer import install_fast_consumer

        install_fast_consumer(app)
    state = {"seen": 0, "t0": 0.0, "cpu0": 0.0}

    def count() -> None:
        if not state["seen"]:
            state["t0"] = time.perf_counter()
            state["cpu0"] = time.process_time()
        state["seen"] += 1
        if state["seen"] == n:
            wall = time.perf_counter() - state["t0"]
            cpu = time.process_time() - state["cpu0"]
            write_result(out, {"eps": n / wall, "cpu_us": 1e6 * cpu / n,
                               "consumer": type(app.consumer).__name__,
                               "suspended": getattr(app.consumer, "suspended_deliveries", 0)})
            os._exit(0)  # the measurement is written; nothing else to tear down

    if variant in WIRE_VARIANTS:
        from streamer.app.kafka import WireSchema

        source = app.topic(topic, schema=WireSchema())
    else:
        source = app.topic(topic, value_type=bytes, value_serializer="raw")

    @app.agent(source)
    async def noop(stream: Any) -> None:
        async for _ in stream:
            count()

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None  # as streamer's worker: the spinner sets the root logger to DEBUG
    worker.execute_from_commandline()


def run_child(variant: str, bootstrap: str, topic: str, n: int, workdir: Path,
              profile: Path | None, profile_format: str = "flamegraph") -> dict[str, Any]:
    out = workdir / f"{variant}-{uuid.uuid4().hex[:6]}.json"
    child = Child([sys.executable, __file__, "--child", variant, "--bootstrap", bootstrap,
                   "--topic", topic, "--events", str(n), "--child-out", str(out)],
                  child_env(), workdir / f"{variant}.log")
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            [py_spy() or "py-spy", "record", "-o", str(profile),
             "-f", profile_format, "-r", "500", "--gil", "-p", str(child.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not out.exists():
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{variant} child failed; see {child.log}")
            time.sleep(0.05)  # waiting for the child's own measurement
        result: dict[str, Any] = json.loads(out.read_text())
        return result
    finally:
        child.stop()
        if spy is not None:
            spy.wait(30)  # py-spy writes its file when the process it follows exits


# -- driver -----------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="stock,fast",
                   help=f"comma-separated, or 'all': {', '.join(VARIANTS)}")
    p.add_argument("--json", type=Path, default=None, help="write the medians here")
    p.add_argument("--profile", type=Path, default=None,
                   help="py-spy the first run of each variant into DIR/<variant>.<format>")
    p.add_argument("--profile-format", choices=PROFILE_FORMATS, default="flamegraph",
                   help="py-spy's output: flamegraph (.svg), raw (collapsed stacks, .txt), "
                        "speedscope (.json)")
    p.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.profile is not None and py_spy() is None:
        p.error("--profile needs py-spy: pip install -e '.[bench]'")
    if args.child:
        faust_child(args.child, args.bootstrap, args.topic, args.events, args.child_out)
        return

    from streamer.app.broker import EmbeddedBroker, create_topics

    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    n = args.events
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench-faust-consumer-") as tmp, \
            EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        workdir = Path(tmp)
        topic = f"purchases-consumer-{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topics(broker.bootstrap, [topic], partitions=PARTITIONS))
        produced = asyncio.run(produce(broker.bootstrap, topic, make_purchases(n)))
        print(f"{n} purchases produced at {produced:,.0f}/s to {topic} ({PARTITIONS} "
              f"partitions) on {broker.bootstrap}", flush=True)
        for rep in range(args.repeats):
            for v in variants:
                profile = (args.profile / f"{v}.{PROFILE_FORMATS[args.profile_format]}"
                           if args.profile and rep == 0 else None)
                r = run_child(v, broker.bootstrap, topic, n, workdir, profile,
                              args.profile_format)
                if profile is not None and args.profile_format == "raw":
                    r["breakdown"] = breakdown(profile, r["cpu_us"])
                runs[v].append(r)
                print(f"  repeat {rep + 1}: {v:<13} {r['eps']:>9,.0f} events/s "
                      f"{r['cpu_us']:>6.1f} us CPU/event  ({r['consumer']}, "
                      f"{r['suspended']} suspended deliveries)", flush=True)

    med = {v: {"eps": statistics.median(r["eps"] for r in rs),
               "cpu_us": statistics.median(r["cpu_us"] for r in rs)} for v, rs in runs.items()}
    base = med.get("stock") or next(iter(med.values()))
    print(f"\nmedians over {args.repeats} repeats, {n} events (ratios against "
          f"{'stock' if 'stock' in med else variants[0]}):")
    for v, m in med.items():
        print(f"  {v:<13} {m['eps']:>9,.0f} events/s ({m['eps'] / base['eps']:.2f}x)  "
              f"{m['cpu_us']:>6.1f} us CPU/event ({base['cpu_us'] / m['cpu_us']:.2f}x less)")
    for v, rs in runs.items():
        if "breakdown" in rs[0]:
            print(f"\n{v}: CPU us/event by category (py-spy, repeat 1, {rs[0]['cpu_us']:.1f} "
                  "us/event):")
            for c, us in rs[0]["breakdown"].items():
                print(f"  {us:6.1f}  {c}")
    if args.json:
        args.json.write_text(json.dumps({"events": n, "repeats": args.repeats, "medians": med,
                                         "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
