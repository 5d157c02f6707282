"""``streamer simulate``: the closed-loop simulator through Kafka.

An embedded broker, a worker and the trainer, each a process of its own, and a simulated
storefront whose ground truth streamer never sees: it reads offers only through
:class:`~streamer.app.storefront.OfferCache` and reports views, impressions, clicks and
purchases on the event topics. Every session is scored against the oracle; the report gives
cumulative reward and regret per policy version (the version of the offer shown).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from streamer.app.broker import EmbeddedBroker, free_port, on_embedded
from streamer.app.demo import StreamerProcess, WorkerProcess, demo_env, wait_ready
from streamer.app.kafka import aiokafka_kwargs, start_client
from streamer.app.storefront import OfferCache
from streamer.app.worker import ensure_topics
from streamer.events import PurchaseEvent
from streamer.settings import KafkaSettings, Settings
from streamer.simulation import Catalogue, Oracle, SimulatedShop, SimulationReport


class SimulatingStorefront:
    """A :class:`SimulatedShop` on Kafka that scores every session against the oracle."""

    def __init__(self, kafka: KafkaSettings, shop: SimulatedShop, *, clicks_topic: str,
                 purchases_topic: str, offers_topic: str, sessions_per_s: float,
                 default_segment: str = "all") -> None:
        self.kafka = kafka
        self.default_segment = default_segment
        self.shop = shop
        self.topics = (clicks_topic, purchases_topic, offers_topic)
        self.sessions_per_s = sessions_per_s
        self.oracle = Oracle(shop.catalogue)
        self.report = SimulationReport(drift_at_ms=shop.catalogue.drift_at_ms)
        self.sent = 0

    async def run(self, duration_s: float) -> SimulationReport:
        clicks, purchases, offers = self.topics
        encode = msgspec.json.Encoder().encode
        producer = AIOKafkaProducer(**aiokafka_kwargs(self.kafka), linger_ms=5)
        await start_client(producer)
        try:
            async with OfferCache(self.kafka, topic=offers,
                                  default_segment=self.default_segment) as cache:
                start, sessions = time.monotonic(), 0
                while (elapsed := time.monotonic() - start) < duration_s:
                    for _ in range(max(0, int(elapsed * self.sessions_per_s) - sessions)):
                        sessions += 1
                        now = int(time.time() * 1000)
                        visit = self.shop.visit(
                            now_ms=now, choose=lambda s, rng: cache.choose(
                                s.anchor, rng, segment=s.segment.name))
                        offer = visit.choice.offer if visit.choice else None
                        best = self.oracle.best(visit.shopper.anchor, visit.shopper.segment,
                                                now, offer)
                        self.report.record(
                            ts_ms=now, policy_version=offer.policy_version if offer else None,
                            expected_reward=visit.expected_reward,
                            oracle_reward=best.expected_reward, reward=visit.reward)
                        for ev in visit.events:
                            topic = purchases if isinstance(ev, PurchaseEvent) else clicks
                            await producer.send(topic, encode(ev), key=ev.session_id.encode())
                            self.sent += 1
                    await asyncio.sleep(0.02)  # pacing the simulated traffic
            await producer.flush()
        finally:
            await producer.stop()
        return self.report


def report_table(report: SimulationReport) -> Table:
    """Cumulative reward, regret and share of the oracle per policy version (and the sessions
    shown no offer), with a caption saying what each figure is: the rewards are the
    simulator's expected ones, not the purchases it happened to draw."""
    table = Table(title="closed loop through Kafka: per policy version")
    for column in ("policy version", "sessions", "expected reward", "regret",
                   "share of oracle", "95% interval"):
        table.add_column(column, justify="right")
    total = report.share_of_oracle()
    for version, v in report.by_version().items():
        lo, hi = v.share.ci95
        table.add_row(version, f"{v.impressions:,}", f"{v.expected_reward:,.1f}",
                      f"{v.regret:,.1f}", f"{v.share.share:.1%}", f"[{lo:.1%}, {hi:.1%}]")
    table.add_row("all", f"{len(report):,}", f"{report.cumulative_reward:,.1f}",
                  f"{report.cumulative_regret:,.1f}", f"{total.share:.1%}",
                  f"[{total.ci95[0]:.1%}, {total.ci95[1]:.1%}]")
    table.caption = (
        "sessions: each shown one variant of an offer of that version, or none; expected "
        "reward: the margin the simulator's hidden model expects of what was shown (take rate "
        "x price paid less cost), summed; regret: what the oracle's best variant would have "
        "earned on top; share of oracle: expected reward / the oracle's, with its 95% interval")
    table.caption_justify = "left"
    return table


async def run_simulation(settings: Settings, *, duration_s: float, console: Console,
                         with_trainer: bool = True) -> SimulationReport:
    """Start broker, worker (and trainer), run the simulated storefront, stop everything."""
    workdir = Path(tempfile.mkdtemp(prefix="streamer-simulate-"))
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        web_port = free_port()
        # As the demo's: seconds-long attribution windows and the trainer's demo cadence,
        # or a run of minutes would close no impression and fine-tune nothing.
        env = demo_env(settings, bootstrap=broker.bootstrap,
                       app_id=f"streamer-simulate-{os.getpid()}", web_port=web_port,
                       data_dir=workdir / "data")
        settings = on_embedded(settings, broker.bootstrap)
        await ensure_topics(settings)
        console.print(f"broker on {broker.bootstrap}; logs in {workdir}")
        worker = WorkerProcess(env, workdir / "worker.log")
        trainer: StreamerProcess | None = None
        try:
            await wait_ready(worker, f"http://127.0.0.1:{web_port}/stats/", timeout_s=60)
            if with_trainer:
                trainer = StreamerProcess("trainer", env, workdir / "trainer.log")
            d, t = settings.demo, settings.topics
            shop = SimulatedShop(Catalogue.generate(d.catalogue_size, seed=d.seed), seed=d.seed)
            store = SimulatingStorefront(settings.kafka, shop, clicks_topic=t.clicks,
                                         purchases_topic=t.purchases, offers_topic=t.offers,
                                         sessions_per_s=d.shoppers_per_s,
                                         default_segment=settings.offers.segment)
            console.print(f"simulating {duration_s:.0f} s at {d.shoppers_per_s:g} sessions/s")
            report = await store.run(duration_s)
        finally:
            if trainer is not None:
                console.print(trainer.stop_and_say())
            console.print(worker.stop_and_say())
    console.print(report_table(report))
    logs = ", ".join(sorted(p.name for p in workdir.glob("*.log")))
    console.print(f"logs: {workdir} ({logs}); the README's *How "
                  "well it learns* says what to expect and how to read a longer run")
    return report
