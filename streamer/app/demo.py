"""``streamer demo``: embedded broker + worker + trainer + simulated storefront, with a live
view.

Everything it starts it stops: the worker and the trainer run in process groups of their own
and are terminated (then killed if they linger), the broker likewise, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from streamer.app.broker import (
    EmbeddedBroker,
    fetch_wait_ms_for_embedded,
    free_port,
    on_embedded,
    stop_process_group,
)
from streamer.app.storefront import StorefrontDriver
from streamer.app.worker import ensure_topics
from streamer.observability import parse_snapshot
from streamer.settings import Settings
from streamer.simulation import Catalogue, SimulatedShop


@dataclass
class DemoResult:
    """What the demo measured; printed at the end and returned for tests."""

    worker_stats: dict[str, Any] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    impressions: int = 0
    offers_seen: int = 0
    malformed_sent: int = 0
    worker_ready_s: float = float("nan")
    rewards: dict[str, Any] = field(default_factory=dict)
    #: The trainer's metrics (``Metrics.snapshot`` shape); empty without a trainer.
    trainer_stats: dict[str, Any] = field(default_factory=dict)
    #: What a conversion is worth (``rewards.reward``: revenue or margin).
    reward: str = "revenue"
    #: Where the broker's, the worker's and the trainer's logs are.
    workdir: Path | None = None
    #: Seconds of simulated traffic the run was asked for.
    duration_s: float = 240.0


#: Seconds a child process has to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0


class StreamerProcess:
    """A ``streamer COMMAND`` child process in its own process group, logging to a file."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamer", command],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop it (:func:`stop_process_group`: SIGTERM, SIGKILL after ``timeout_s``); its exit
        code (negative: the signal that ended it)."""
        return stop_process_group(self.proc, timeout_s)

    def stop_and_say(self, timeout_s: float = STOP_TIMEOUT_S) -> str:
        """:meth:`stop` it and say how it ended (:func:`stopped`), an end that came before it
        was asked told apart."""
        ended_before = self.proc.poll() is not None
        return stopped(self.command, self.stop(timeout_s), timeout_s, ended_before=ended_before,
                       log=self.log_path.name)


class WorkerProcess(StreamerProcess):
    """A ``streamer worker`` child process in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("worker", env, log_path)


#: The trainer's cadence in the demo and ``streamer simulate``, unless the environment sets
#: it: a minute of traffic cannot wait for the defaults (100,000 records or an hour), so a
#: fine-tune every 10 seconds once 200 impressions have closed.
DEMO_TRAINER_ENV = {
    "STREAMER__TRAINER__MIN_RECORDS": "200",
    "STREAMER__TRAINER__EVERY_S": "10",
}

#: The offers' cadence in the demo and ``streamer simulate``, unless the environment sets it:
#: an offer reconsidered every ``offers.min_interval_s`` (5 s), its waits not doubling up to a
#: minute, and every change republished (``offers.min_change`` 0), as before those defaults.
#: Why: the defaults are made for a store's hours; in a demo of 90 s they held back most
#: republications (584-637 offers published in 3 demos, against 1,409-1,438 before those
#: defaults and 1,000-1,601 with this cadence: an exploration variant trading places with
#: another moves 2.5 % of the mass, under the 5 % that counts), and the trainer's candidates,
#: learned and judged on those impressions, never passed its gate (no promotion in the 3
#: demos; with this cadence, in 3 of 4: the first at 50, 55 and 93 s).
#: And v0 exploring 0.3 of each offer's mass (``offers.epsilon``; 0.1 by default): the gate
#: judges a candidate only on what v0's logs can vouch for, so its paired interval narrows with
#: v0's probability of the variants the candidate prefers. At 0.1 (0.025 for each variant v0
#: does not favour) one 600 s ``streamer simulate`` promoted at ~290 s and another never; at 0.3
#: a 300 s one promoted at 84 s, and 180 s demos at ~100, ~168 and ~178 s, hence demos of 240 s
#: (README, "What the gate vouches for").
DEMO_OFFERS_ENV = {
    "STREAMER__OFFERS__MAX_RECHECK_INTERVAL_S": "0",
    "STREAMER__OFFERS__MIN_CHANGE": "0",
    "STREAMER__OFFERS__EPSILON": "0.3",
}

#: Where the demo's trainer serves /metrics (a free port unless the environment sets one):
#: the view shows what its gate made of its candidates.
TRAINER_METRICS_PORT = "STREAMER__TRAINER__METRICS_PORT"


def _cadence(settings: Settings, name: str, demo_value: str) -> str:
    """The value for the field ``STREAMER__SECTION__FIELD`` names: ``settings``' own when a
    source set it (the environment, ``.env``, code), else the demo's."""
    _, section, field_name = name.lower().split("__", 2)
    values = getattr(settings, section)
    return str(getattr(values, field_name)) if field_name in values.model_fields_set else demo_value


def demo_env(settings: Settings, *, bootstrap: str, app_id: str, web_port: int,
             data_dir: Path) -> dict[str, str]:
    """The environment of the demo's (and ``streamer simulate``'s) worker and trainer: this
    broker (and the embedded broker's fetch wait, unless one is configured), app, the
    storefront's segments, seconds-long reward windows, and the trainer's and the offers' demo
    cadence (:data:`DEMO_TRAINER_ENV`, :data:`DEMO_OFFERS_ENV`) where ``settings`` (the
    environment, the ``.env`` file, code) set none: the children get the value either way (a
    cadence variable overrode the ``.env`` line they read, and code reaches them only so)."""
    cadence = {name: _cadence(settings, name, value)
               for name, value in {**DEMO_TRAINER_ENV, **DEMO_OFFERS_ENV}.items()}
    return {
        **os.environ,
        **cadence,
        "STREAMER__KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STREAMER__KAFKA__FETCH_MAX_WAIT_MS": str(fetch_wait_ms_for_embedded(settings.kafka)),
        "STREAMER__WORKER__APP_ID": app_id,
        "STREAMER__WORKER__WEB_PORT": str(web_port),
        "STREAMER__WORKER__DATA_DIR": str(data_dir),
        "STREAMER__OFFERS__MIN_INTERVAL_S": str(settings.offers.min_interval_s),
        "STREAMER__OFFERS__SEGMENT": settings.offers.segment,
        "STREAMER__OFFERS__SEGMENTS": settings.offers.segments,
        # A demo of a minute or two cannot wait for 30-minute attribution windows.
        "STREAMER__REWARDS__ATTRIBUTION_WINDOW_S": "5",
        "STREAMER__REWARDS__ALLOWED_LATENESS_S": "1",
        "STREAMER__REWARDS__LEDGER_LATENESS_S": "1",
        "STREAMER__REWARDS__WINDOWS": "5s,30s/5s",
    }


async def fetch_stats(session: aiohttp.ClientSession, url: str, *,
                      prometheus: bool = False) -> dict[str, Any] | None:
    """A JSON page (the worker's ``/stats/``, the dashboard's data), or with ``prometheus`` a
    ``/metrics`` page as :meth:`Metrics.snapshot` (the trainer's); None while not answering."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            if r.status == 200:
                data: dict[str, Any] = (parse_snapshot(await r.text()) if prometheus
                                        else await r.json())
                return data
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
    return None


async def wait_ready(worker: WorkerProcess, url: str, timeout_s: float) -> float:
    """Seconds until the worker reports ready (its partitions assigned and recovered)."""
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - start < timeout_s:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; see {worker.log_path}")
            stats = await fetch_stats(session, url)
            if stats and stats.get("ready"):
                return time.monotonic() - start
            await asyncio.sleep(0.2)  # polling an HTTP endpoint for a condition
    raise TimeoutError(f"worker not ready after {timeout_s:.0f} s; see {worker.log_path}")


def _by_topic(stats: dict[str, Any], name: str) -> dict[str, float]:
    value = stats.get(name) or {}
    return value if isinstance(value, dict) else {}


def adopted_versions(stats: dict[str, Any]) -> list[str]:
    """The policy versions the worker made live (promotions and rollbacks), sorted."""
    return sorted(_by_topic(stats, "streamer_policy_adoptions_total"))


def render(result: DemoResult, driver: StorefrontDriver, remaining: float) -> Group:
    s = result.worker_stats
    counts = Table(title=f"streamer demo — {remaining:4.0f} s left", expand=False)
    counts.add_column("what")
    counts.add_column("value", justify="right")
    for topic, n in storefront_consumed(s, driver.sent).items():
        counts.add_row(f"consumed from {topic}", f"{n:,.0f}")
    counts.add_row("offers published", f"{s.get('streamer_offers_published_total', 0):,.0f}")
    dead = sum(_by_topic(s, "streamer_dead_letters_total").values())
    counts.add_row("dead letters", f"{dead:,.0f}")
    counts.add_row("items tracked", f"{s.get('tracked_items', 0):,}")
    counts.add_row("offer impressions shown", f"{driver.impressions:,}")
    counts.add_row("policy versions adopted", f"{len(adopted_versions(s)):,}")
    if result.trainer_stats:
        judged = trainer_candidates(result.trainer_stats)
        counts.add_row("trainer candidates promoted / rejected",
                       f"{judged.promoted:,} / {judged.rejected:,}")
        if judged.promoted or judged.rejected:
            counts.add_row("last candidate's margin at the gate", f"{judged.margin:+.3f}")
    rewards = Table(title="reward per impression by policy version", expand=False)
    for name in ("version", "impressions", "conversions", "revenue", "overall",
                 "newest 5s window (impressions)"):
        rewards.add_column(name, justify="left" if name == "version" else "right")
    for row in reward_rows(result):
        rewards.add_row(*row)
    offers = Table(title="current offers (newest)", expand=False)
    offers.add_column("anchor")
    offers.add_column("variants: items @ discount (probability)")
    if driver.cache is not None:
        book = driver.cache.book
        newest = sorted((book.get(a) for a in book.anchors()), key=lambda o: -o.ts if o else 0)
        for offer in newest[:6]:
            if offer is None:
                continue
            offers.add_row(offer.anchor_item_id, "\n".join(
                f"{' + '.join(v.items)} @ {v.discount_pct:.0f}% ({v.probability:.2f})"
                for v in offer.variants))
    return Group(counts, rewards, offers)


@dataclass(frozen=True)
class Candidates:
    """What the trainer's gate made of its candidates so far."""

    promoted: int
    rejected: int
    #: The last one's paired lower bound of reward per impression minus the live policy's.
    margin: float
    #: Rounds that trained no candidate, as too few impressions of the live version had
    #: closed yet to judge one against (after a promotion).
    skipped: int = 0


def trainer_candidates(stats: dict[str, Any]) -> Candidates:
    """:class:`Candidates` from the trainer's metrics (``Metrics.snapshot`` shape)."""
    return Candidates(
        promoted=int(stats.get("streamer_trainer_promotions_total", 0)),
        rejected=int(sum(_by_topic(stats, "streamer_trainer_rejections_total").values())),
        margin=float(stats.get("streamer_trainer_gate_margin", 0.0)),
        skipped=int(_by_topic(stats, "streamer_trainer_skips_total").get("too_few_live", 0)))


def trainer_lines(stats: dict[str, Any], adopted: int, duration_s: float = 240.0) -> list[str]:
    """The summary's lines on the trainer (none without its metrics): its candidates, and
    why no learned version went live when none did (``duration_s``: the run's, to suggest
    a longer one)."""
    if not stats:
        return []
    judged = trainer_candidates(stats)
    n = judged.promoted + judged.rejected
    line = (f"trainer candidates: {n:,} judged, {judged.promoted:,} promoted, "
            f"{judged.rejected:,} rejected")
    if n:
        line += (f" (the last one's margin at the gate: {judged.margin:+.3f} reward per "
                 "impression; promoted above 0)")
    if judged.skipped:
        line += (f"; {judged.skipped:,} round{'s' * (judged.skipped != 1)} skipped before "
                 "training (too few impressions of the live version yet to judge a candidate "
                 "against)")
    lines = [line]
    longer = f"--duration {2 * duration_s:.0f}"
    if adopted:
        return lines
    if judged.promoted:
        lines.append("the trainer promoted a version as the run ended; the worker had not "
                     "adopted it yet")
    elif n:
        lines.append("no learned version went live: the gate promotes a candidate once the "
                     "paired lower bound of its reward per impression beats the live "
                     "policy's, and each fine-tune has more closed impressions to learn and "
                     f"be judged on; a longer run ({longer}) gives it more")
    else:
        lines.append("no learned version yet: the trainer had not judged a candidate (it "
                     "fine-tunes once enough impressions have closed); a longer run "
                     f"({longer}) gets there")
    return lines


def storefront_consumed(stats: dict[str, Any], sent: dict[str, int]) -> dict[str, float]:
    """Events the worker consumed from the topics the storefront sends to (``sent``'s), by
    topic: not its internal topics, whose messages are batches of its own making (the
    item-baskets repartition), no events a user sent."""
    consumed = _by_topic(stats, "streamer_events_consumed_total")
    return {topic: consumed.get(topic, 0.0) for topic in sorted(sent)}


def stopped(name: str, code: int | None, timeout_s: float = STOP_TIMEOUT_S, *,
            ended_before: bool = False, log: str | None = None) -> str:
    """What the end of a child process says (:func:`stop_process_group`'s exit code): a
    child killed after ``timeout_s`` told apart from one that stopped or crashed, and one that
    had ended before it was asked to stop (``ended_before``) from both. (The trainer abandons a
    running fine-tune within a step when asked to stop; killed, it was stuck. Killed before it
    was asked, something else killed it: the kernel's out-of-memory killer, say.) ``log``:
    its log file's name (``{name}.log`` by default).

    >>> stopped("worker", 0)
    'worker stopped'
    >>> stopped("trainer", -9)  # doctest: +ELLIPSIS
    'trainer killed: still running 15 s after it was asked to stop (...)'
    >>> print(stopped("worker", -9, ended_before=True))  # doctest: +ELLIPSIS
    worker had ended before the run did: killed by SIGKILL, not by this command (the ...
    """
    log = f"see its log, {log or f'{name}.log'}"
    if ended_before:
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
               and -code in signal.valid_signals() else f"exit code {code}")
        by = (", not by this command (the kernel's out-of-memory killer, say)"
              if code == -signal.SIGKILL else "")
        return f"{name} had ended before the run did: {how}{by} ({log})"
    if code == 0:
        return f"{name} stopped"
    if code == -signal.SIGKILL:
        return f"{name} killed: still running {timeout_s:.0f} s after it was asked to stop ({log})"
    return f"{name} stopped with exit code {code} ({log})"


def reward_rows(result: DemoResult) -> list[tuple[str, ...]]:
    """Per policy version: closed impressions, conversions, revenue, reward per impression
    overall (from the worker's counters) and in the newest closed window (the dashboard's)."""
    s = result.worker_stats
    impressions = _by_topic(s, "streamer_reward_impressions_total")
    conversions = _by_topic(s, "streamer_reward_conversions_total")
    revenue = _by_topic(s, "streamer_reward_revenue_total")
    gain = _by_topic(s, "streamer_reward_sum_total")
    loss = _by_topic(s, "streamer_reward_loss_total")
    reward = {v: gain[v] - loss.get(v, 0.0) for v in gain}
    newest = {series["policy_version"]: series["points"][-1]
              for series in result.rewards.get("series", []) if series["points"]}
    rows: list[tuple[str, ...]] = []
    for version in sorted(set(impressions) | set(newest)):
        n = impressions.get(version, 0.0)
        last = newest.get(version)
        rows.append((version, f"{n:,.0f}", f"{conversions.get(version, 0):,.0f}",
                     f"{revenue.get(version, 0):,.2f}",
                     f"{reward.get(version, 0) / n:.3f}" if n else "—",
                     f"{last['reward_rate']:.3f} ({last['impressions']})" if last else "—"))
    return rows


async def run_demo(settings: Settings, *, duration_s: float, console: Console,
                   live_view: bool = True, with_trainer: bool = True) -> DemoResult:
    """Run the whole loop for ``duration_s`` seconds and return its figures; with the trainer
    (``streamer trainer``, at the demo's cadence: :data:`DEMO_TRAINER_ENV`) the workers adopt
    the torch versions it promotes, and the reward table shows them beside v0."""
    workdir = Path(tempfile.mkdtemp(prefix="streamer-demo-"))
    result = DemoResult(reward=settings.rewards.reward, workdir=workdir, duration_s=duration_s)
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        web_port = free_port()
        app_id = f"streamer-demo-{os.getpid()}"
        env = demo_env(settings, bootstrap=broker.bootstrap, app_id=app_id,
                       web_port=web_port, data_dir=workdir / "data")
        # The trainer's /metrics (its candidates and the gate's verdicts), for the view.
        trainer_port = settings.trainer.metrics_port or free_port()  # environment or .env
        env[TRAINER_METRICS_PORT] = str(trainer_port)
        trainer_url = f"http://127.0.0.1:{trainer_port}/metrics"

        async def read_trainer(session: aiohttp.ClientSession) -> None:
            if trainer is not None:  # the last figures stay when a poll gets no answer
                stats = await fetch_stats(session, trainer_url, prometheus=True)
                result.trainer_stats = stats or result.trainer_stats

        settings = on_embedded(settings, broker.bootstrap)
        await ensure_topics(settings)
        console.print(f"broker on {broker.bootstrap} (pid {broker.pid}); logs in {workdir}")
        worker = WorkerProcess(env, workdir / "worker.log")
        console.print(f"worker starting (pid {worker.proc.pid})")
        trainer: StreamerProcess | None = None
        try:
            if with_trainer:
                trainer = StreamerProcess("trainer", env, workdir / "trainer.log")
                console.print(f"trainer starting (pid {trainer.proc.pid})")
            stats_url = f"http://127.0.0.1:{web_port}/stats/"
            dashboard_url = f"http://127.0.0.1:{web_port}/dashboard/data.json"
            result.worker_ready_s = await wait_ready(worker, stats_url, timeout_s=60)
            console.print(f"worker ready in {result.worker_ready_s:.1f} s; dashboard "
                          f"http://127.0.0.1:{web_port}/dashboard/")
            d, t = settings.demo, settings.topics
            shop = SimulatedShop(Catalogue.generate(d.catalogue_size, seed=d.seed), seed=d.seed)
            driver = StorefrontDriver(settings.kafka, shop, clicks_topic=t.clicks,
                                      purchases_topic=t.purchases, offers_topic=t.offers,
                                      sessions_per_s=d.shoppers_per_s,
                                      default_segment=settings.offers.segment)
            task = asyncio.create_task(driver.run(duration_s))
            end = time.monotonic() + duration_s
            async with aiohttp.ClientSession() as session:
                with Live(console=console, refresh_per_second=2, transient=False,
                          auto_refresh=False) if live_view else contextlib.nullcontext() as live:
                    while not task.done():
                        stats = await fetch_stats(session, stats_url)
                        if stats:
                            result.worker_stats = stats
                        board = await fetch_stats(session, dashboard_url)
                        if board:
                            result.rewards = board
                        await read_trainer(session)
                        if live is not None:
                            live.update(render(result, driver, max(0.0, end - time.monotonic())),
                                        refresh=True)
                        await asyncio.wait({task}, timeout=1.0)
                await task
                # Let the worker drain what was just sent before the final figures.
                sent_total = sum(driver.sent.values()) + driver.malformed_sent
                drain_end = time.monotonic() + 15
                while time.monotonic() < drain_end:
                    stats = await fetch_stats(session, stats_url)
                    if stats:
                        result.worker_stats = stats
                        by_topic = _by_topic(stats, "streamer_events_consumed_total")
                        if by_topic.get(t.clicks, 0) + by_topic.get(t.purchases, 0) >= sent_total:
                            break
                    await asyncio.sleep(0.3)  # polling the worker's counters
                await read_trainer(session)
            result.sent = dict(driver.sent)
            result.impressions = driver.impressions
            result.malformed_sent = driver.malformed_sent
            result.offers_seen = driver.cache.book.revisions if driver.cache else 0
        finally:
            if trainer is not None:
                console.print(trainer.stop_and_say())
            console.print(worker.stop_and_say())
    console.print(Panel(summary(result), title="demo summary"))
    return result


def summary(result: DemoResult) -> str:
    """The demo's end summary: what was sent and consumed, what the offers earned per policy
    version (and what that figure is), what the trainer did, and where to look next."""
    s = result.worker_stats
    malformed = result.malformed_sent
    lines = [f"events sent by the simulated storefront: {sum(result.sent.values()):,} "
             f"(+{malformed:,} malformed on purpose)"]
    lines += [f"events consumed from {k}: {v:,.0f}"
              for k, v in storefront_consumed(s, result.sent).items()]
    lines.append(f"offers published: {s.get('streamer_offers_published_total', 0):,.0f}")
    dead = sum(_by_topic(s, "streamer_dead_letters_total").values())
    lines.append(f"dead letters: {dead:,.0f}" + (
        " (the malformed events: set aside with their reason, the worker went on)"
        if dead == malformed else f" ({malformed:,} malformed events were sent)"))
    rows = reward_rows(result)
    closed = sum(int(row[1].replace(",", "")) for row in rows)
    lines.append(f"offer impressions shown: {result.impressions:,}, {closed:,} of them closed "
                 "(their attribution window over: bought with the offer or not); the rest "
                 "were still open when the demo ended")
    lines += [f"{row[0]}: {row[4]} {result.reward} per closed impression ({row[3]} of "
              f"bundle revenue from {row[2]} conversions over {row[1]} impressions)"
              for row in rows]
    adopted = adopted_versions(s)
    lines.append(f"policy versions adopted: {len(adopted)}"
                 + (f" ({', '.join(adopted)})" if adopted else ""))
    lines += trainer_lines(result.trainer_stats, len(adopted), result.duration_s)
    lines.append(f"worker ready after: {result.worker_ready_s:.1f} s")
    if result.workdir is not None:
        logs = ", ".join(sorted(p.name for p in result.workdir.glob("*.log")))
        lines.append(f"logs: {result.workdir} ({logs})")
    lines.append("next: `streamer simulate` scores the policies against the simulator's "
                 "oracle; `streamer worker` and `streamer trainer` run them on your own Kafka "
                 "(README: *Command line*)")
    return "\n".join(lines)
