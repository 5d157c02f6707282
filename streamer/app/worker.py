"""Running a worker: create the topics streamer owns, then hand the process to faust."""

from __future__ import annotations

import asyncio
import logging

import faust

from streamer.app.broker import create_topics
from streamer.app.factory import create_app
from streamer.app.kafka import aiokafka_kwargs
from streamer.settings import Settings

log = logging.getLogger(__name__)


def topic_names(settings: Settings) -> list[str]:
    """The public topics (design.md section 2); faust creates its internal ones itself."""
    t = settings.topics
    return [t.clicks, t.purchases, t.offers, t.feedback, t.rewards, t.policy_updates,
            t.dead_letters]


async def ensure_topics(settings: Settings) -> None:
    """Create missing public topics with the configured partitions."""
    kw = aiokafka_kwargs(settings.kafka)
    await create_topics(
        kw.pop("bootstrap_servers"),
        topic_names(settings),
        partitions=settings.topics.partitions,
        replication_factor=settings.topics.replication_factor,
        **kw,
    )


def run_worker(settings: Settings) -> None:
    """Block running a worker until SIGINT/SIGTERM; exits the process when faust stops."""
    asyncio.run(ensure_topics(settings))
    sa = create_app(settings)
    worker = faust.Worker(
        sa.app,
        loglevel=settings.worker.log_level,
        # faust's terminal spinner sets the root logger to DEBUG, which costs ~12% throughput.
        quiet=True,
    )
    worker.execute_from_commandline()
