"""Where one worker's CPU goes per purchase over ``throughput.py``'s timed span, by part.

``throughput.py`` reports the worker's CPU per purchase, all of it; its py-spy profile
(``--profile``) spreads a run's samples over functions, warm-up included, and samples a thread
waiting for a core on a loaded machine as if it ran. This runs the same worker on the same
purchases (``throughput.py``'s ``make_purchases``, a warm-up of ``--warmup`` taken untimed, then
``--events`` timed, a fresh broker per run) and reads, over exactly the timed span, the CPU time
of each of its threads (``/proc``) and, from inside it, the CPU time of its main thread in:

- ``engine``: ``Engine.learn_baskets`` (learning the item baskets, reconsidering offers,
  logging decisions);
- ``write-back <table>``: ``BufferedTable.flush`` per table (encoding every key changed since
  the last commit, the store, the cache of decoded values, the changelog records), with the
  keys written per purchase and the CPU per key;
- ``collector``: the garbage collector's collections (also counted in the part that allocated
  when one ran), and how many.

What is left of the main thread (``other``) is faust's delivery and the agents' own work
around the engine: decoding, de-duplication, fan-out, attribution, acks, sends, and the
``/stats/`` polls that time the span (~1 ms of CPU each, every 100 ms).

The parts are read by a ``sitecustomize`` module this script puts first on the worker's
``PYTHONPATH``; it wraps the methods above when the worker starts (a few tenths of a
microsecond per call: per batch, per flushed table, per collection, not per event) and writes
its totals to a file every 0.1 s, so the span's ends are read to within 0.1 s. Why CPU time and
not instructions: the hardware counters ``perf stat -e instructions:u`` needs are not there on
this machine (a virtual one: perf reports them ``<not supported>``), and callgrind would slow
the worker 50-fold against a broker's timeouts. CPU time moves with the machine's load (here the
same worker's engine took 36-57 us per purchase from one run to the next), the write-back's CPU
per key much less (per table, within ~10 % across runs), so compare parts side by side:
``--ref DIR`` runs another checkout (e.g. a ``git archive`` of the commit before a change)
alternately with this one and prints the medians of both.

    PYTHONPATH=. python benchmarks/worker_breakdown.py --warmup 61000 --events 40000
    PYTHONPATH=. python benchmarks/worker_breakdown.py --ref /tmp/before --repeats 4
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import throughput as tp

#: Where the worker's sitecustomize writes its totals (the variable names the file).
OUT_ENV = "STREAMER_BREAKDOWN_OUT"

#: Loaded by the worker at start-up (first on its PYTHONPATH): wraps what is measured.
SITECUSTOMIZE = f'''
import os
if os.environ.get("{OUT_ENV}"):
    import gc, json, threading, time
    from streamer.app.tables import BufferedTable
    from streamer.engine import Engine

    OUT = os.environ["{OUT_ENV}"]
    TOTALS = {{}}  # part -> [CPU seconds of the main thread, count]

    def add(part, seconds, n):
        total = TOTALS.setdefault(part, [0.0, 0])
        total[0] += seconds
        total[1] += n

    flush = BufferedTable.flush

    def timed_flush(self):
        t0 = time.thread_time()
        n = flush(self)
        add("write-back " + str(getattr(self._raw, "name", "dict")), time.thread_time() - t0, n)
        return n

    learn_baskets = Engine.learn_baskets

    def timed_learn_baskets(self, baskets):
        t0 = time.thread_time()
        try:
            return learn_baskets(self, baskets)
        finally:
            add("engine", time.thread_time() - t0, len(baskets))

    started = [0.0]

    def collecting(phase, info):
        if phase == "start":
            started[0] = time.thread_time()
        else:
            add("collector", time.thread_time() - started[0], 1)

    def write_totals():
        while True:
            time.sleep(0.1)
            with open(OUT + ".tmp", "w") as f:
                json.dump(TOTALS, f)
            os.replace(OUT + ".tmp", OUT)

    BufferedTable.flush = timed_flush
    Engine.learn_baskets = timed_learn_baskets
    gc.callbacks.append(collecting)
    threading.Thread(target=write_totals, name="breakdown", daemon=True).start()
'''


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by ``tid:name``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[f"{task.name}:{name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def totals(path: Path) -> dict[str, list[float]]:
    """The worker's totals as last written (empty before the first write)."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def read(worker: Any, out: Path, wait: float = 0.0,
         ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The worker's threads' CPU and its totals, after ``wait`` seconds."""
    time.sleep(wait)
    return thread_cpu(worker.child.proc.pid), totals(out)


def one_run(code: Path, hook: Path, workdir: Path, warm: list[tuple[bytes, bytes]],
            timed: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """One worker of checkout ``code`` on a fresh broker; its parts over the timed span, in CPU
    microseconds per timed purchase (``keys <table>``: keys written per purchase)."""
    from streamer.app.broker import EmbeddedBroker, create_topics
    from streamer.app.worker import ensure_topics

    out = workdir / f"breakdown-{uuid.uuid4().hex[:8]}.json"
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        topic = f"purchases-breakdown-{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topics(broker.bootstrap, [topic], partitions=tp.PARTITIONS))
        asyncio.run(tp.produce(broker.bootstrap, topic, warm))
        settings = tp.worker_settings(broker.bootstrap, topic, workdir)
        asyncio.run(ensure_topics(settings))
        # The checkout on PYTHONPATH after the hook, not as ``code=`` (that would replace it);
        # the worker runs in ``workdir``, so ``-m`` puts no checkout first.
        env = {"PYTHONPATH": os.pathsep.join([str(hook), str(code)]), OUT_ENV: str(out)}
        worker = tp.StreamerWorker(settings, workdir, env)
        try:
            limit = time.monotonic() + tp.RUN_TIMEOUT_S
            warm_baskets = tp.item_baskets(warm)
            tp.wait_done([worker], len(warm), limit, warm_baskets)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                producing = pool.submit(asyncio.run, tp.produce(broker.bootstrap, topic, timed))
                started = tp.wait_started([worker], len(warm), limit, producing)
                # The totals may be 0.1 s old: the worker was idle then, waiting for these.
                threads0, parts0 = read(worker, out)
                producing.result()
            tp.wait_done([worker], len(warm) + len(timed), limit,
                         warm_baskets + tp.item_baskets(timed), started, len(warm))
            threads1, parts1 = read(worker, out, 0.15)  # totals written every 0.1 s
        finally:
            worker.child.stop()
    n, pid = len(timed), worker.child.proc.pid
    result = {"cpu": tp.CPU_US[-1]}
    main = next(k for k in threads1 if k.startswith(f"{pid}:"))  # tid == pid
    per_thread = {k: 1e6 * (v - threads0.get(k, 0.0)) / n for k, v in threads1.items()}
    result["main thread"] = per_thread.pop(main)
    result["other threads"] = sum(per_thread.values())
    parts = 0.0
    result["write-back (all tables)"] = result["keys (all tables)"] = 0.0
    for part, (seconds, count) in sorted(parts1.items()):
        s0, c0 = parts0.get(part, [0.0, 0])
        result[part] = 1e6 * (seconds - s0) / n
        if part != "collector":  # its time is in the part a collection ran in
            parts += result[part]
        if part.startswith("write-back"):
            result["keys" + part.removeprefix("write-back")] = (count - c0) / n
            result["write-back (all tables)"] += result[part]
            result["keys (all tables)"] += (count - c0) / n
        elif part == "collector":
            result["collections (count)"] = count - c0
    result["other"] = result["main thread"] - parts
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="purchases timed")
    parser.add_argument("--warmup", type=int, default=61_000, help="purchases before, untimed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref", type=Path, default=None, metavar="DIR",
                        help="also run this checkout's worker, alternating")
    args = parser.parse_args()
    events = tp.make_purchases(args.warmup + args.events)
    warm, timed = events[:args.warmup], events[args.warmup:]
    sides = [("this", tp.ROOT)] + ([("ref", args.ref.resolve())] if args.ref else [])
    runs: dict[str, list[dict[str, float]]] = {side: [] for side, _ in sides}
    with tempfile.TemporaryDirectory(prefix="worker-breakdown-") as tmp:
        workdir = Path(tmp)
        hook = workdir / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        cwd = os.getcwd()
        os.chdir(workdir)  # see one_run: the worker's cwd holds no checkout
        try:
            for repeat in range(args.repeats):
                for side, code in sides if repeat % 2 == 0 else sides[::-1]:
                    result = one_run(code, hook, workdir, warm, timed)
                    runs[side].append(result)
                    print(f"  repeat {repeat + 1} {side}: {result['cpu']:.1f} us of CPU per "
                          f"purchase (engine {result.get('engine', 0.0):.1f}, other "
                          f"{result['other']:.1f})", flush=True)
        finally:
            os.chdir(cwd)
    print(f"medians over {args.repeats} repeats, {args.events:,} purchases after "
          f"{args.warmup:,}: CPU us per purchase (write-back: keys per purchase, us per key)")
    print("  " + "".ljust(28) + "".join(side.rjust(24) for side, _ in sides))
    names = list(dict.fromkeys(k for rs in runs.values() for r in rs for k in r))
    for name in names:
        if name.startswith("keys"):
            continue
        keys = "keys" + name.removeprefix("write-back")
        cells = []
        for side, _ in sides:
            us = statistics.median(r.get(name, 0.0) for r in runs[side])
            cell = f"{us:.2f}"
            written = [r for r in runs[side] if r.get(keys)]
            if name.startswith("write-back") and written:
                n = statistics.median(r[keys] for r in written)
                per_key = statistics.median(r[name] / r[keys] for r in written)
                cell += f" ({n:.2f}, {per_key:.2f})"
            cells.append(cell)
        if any(c != "0.00" for c in cells):
            print("  " + name.ljust(28) + "".join(c.rjust(24) for c in cells))


if __name__ == "__main__":
    main()
