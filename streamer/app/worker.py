"""Running a worker: create the topics streamer owns, then hand the process to faust."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

import faust

from streamer.app.broker import create_missing
from streamer.app.crashes import stop_process
from streamer.app.factory import create_app
from streamer.app.kafka import admin_client
from streamer.app.topics import TopicNeeds, reconcile
from streamer.settings import Settings, WorkerSettings

log = logging.getLogger(__name__)


def topic_names(settings: Settings) -> list[str]:
    """The public topics (design.md section 2); faust creates its internal ones itself."""
    t = settings.topics
    return [t.clicks, t.purchases, t.offers, t.feedback, t.rewards, t.policy_updates,
            t.dead_letters]


#: What ``policy-updates`` is created with, and set to on an existing one: kept forever, by
#: time and by size, and never compacted. Workers, the trainer and ``streamer policy`` rebuild
#: the versions and the live one by replaying it from the beginning; under the broker's default
#: retention (7 days) a version's record ages out, and a restarted worker then refuses a
#: rollback to it and serves another version than the workers that kept running; compaction
#: would keep only the last record (every record has the key "policy"). It holds one record
#: per promotion or rollback (tens of KB). docker-compose.yml's ``topics`` service sets the
#: same (tests/unit/test_compose).
KEEP_FOREVER: dict[str, str] = {"cleanup.policy": "delete", "retention.ms": "-1",
                                "retention.bytes": "-1"}


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic configuration of the public topics that must not get the broker's defaults."""
    return {settings.topics.policy_updates: dict(KEEP_FOREVER)}


def topic_needs(settings: Settings) -> list[TopicNeeds]:
    """What streamer needs of each public topic, existing or not (see
    :mod:`streamer.app.topics`): clicks and purchases have ``topics.partitions`` partitions,
    policy-updates :data:`KEEP_FOREVER`; the others are written through the partitioner and
    read in full, so any partition count works."""
    t = settings.topics
    joined = {t.clicks, t.purchases}
    configs = topic_configs(settings)
    return [
        TopicNeeds(
            name,
            partitions=t.partitions if name in joined else None,
            configs=configs.get(name, {}),
            why=("partition p of clicks and purchases is joined on one worker with faust's "
                 "internal topics" if name in joined else
                 "kept forever: workers rebuild the live policy version and rollbacks by "
                 "replaying it from its start" if name in configs else ""),
        )
        for name in topic_names(settings)
    ]


async def ensure_topics(settings: Settings) -> None:
    """Check the public topics that exist (:mod:`streamer.app.topics`: set what is safe to
    set, raise :class:`~streamer.app.topics.TopicSetupError` on what is not, before creating
    anything), then create the missing ones with the configured partitions (and
    :func:`topic_configs`)."""
    async with admin_client(settings.kafka) as (admin, bootstrap):
        existing = set(await admin.list_topics())
        await reconcile(admin, topic_needs(settings), existing, bootstrap=bootstrap)
        await create_missing(admin, topic_names(settings), existing,
                             partitions=settings.topics.partitions,
                             replication_factor=settings.topics.replication_factor,
                             configs=topic_configs(settings))


def run_worker(settings: Settings) -> None:
    """Block running a worker until SIGINT/SIGTERM, or until an agent crashes (exit status 1:
    :mod:`streamer.app.crashes`); exits the process when faust stops."""
    asyncio.run(ensure_topics(settings))
    _install_uvloop()
    sa = create_app(settings)
    worker = faust.Worker(
        sa.app,
        loglevel=settings.worker.log_level,
        quiet=True,
    )
    # faust's terminal spinner sets the root logger to DEBUG at log level warning/error (~12%
    # throughput on paths that send), and quiet=True does not stop it: the spinner must go.
    worker.spinner = None
    # An agent that raises stops the worker, exit status 1 (streamer.app.crashes).
    sa.crashes.on_crash = stop_process(worker)

    @sa.app.task
    async def dump_tasks_on_sigusr2() -> None:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR2, _log_worker_state, sa.app)

    tune_gc(settings.worker)
    worker.execute_from_commandline()


def tune_gc(settings: WorkerSettings) -> None:
    """Set the garbage collector up for a worker about to run (see
    ``WorkerSettings.gc_young_threshold``).

    What exists now (modules of faust, torch, River, sklearn: ~150k objects) lives as long
    as the process: frozen out of the collector's sight, full collections only walk what the
    worker allocates later (they cost ~0.1 s each otherwise, counted in the agents' time)."""
    gc.freeze()
    if settings.gc_young_threshold:
        gc.set_threshold(settings.gc_young_threshold, *gc.get_threshold()[1:])


def _log_worker_state(app: faust.App) -> None:
    """``kill -USR2 <worker pid>``: log the consumer's partitions, then the task stacks."""
    _log_partition_states(app)
    _log_task_stacks()


def _log_partition_states(app: faust.App) -> None:
    """Log, per partition, faust's read and committed offsets, whether it is active or paused,
    the acks waiting to be committed and aiokafka's fetch position and high watermark: a
    partition whose commit stopped advancing shows where (committed < read offset: acks
    missing; position short of the highwater while active: fetching stopped)."""
    consumer = app._consumer
    if consumer is None:
        log.warning("consumer: not created yet")
        return
    states = getattr(consumer, "partition_states", None)
    if states is None:
        log.warning("consumer %r: no partition_states()", type(consumer).__name__)
        return
    log.warning("consumer: flow_active=%s generation=%s in_recovery=%s",
                getattr(consumer, "flow_active", None), app.consumer_generation_id, app.in_recovery)
    for row in states():
        log.warning("partition %s", " ".join(f"{k}={v}" for k, v in row.items()))


def _log_task_stacks() -> None:
    """``kill -USR2 <worker pid>``: log where every asyncio task of the worker waits, along its
    await chain (a stuck agent shows as a task parked on the same line dump after dump)."""
    for task in asyncio.all_tasks():
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < 24:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name} "
                             f"({frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno})")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        log.warning("task %s: %s", task.get_name(), " -> ".join(chain) or "(not a coroutine)")
    # Agent bodies hide behind faust's wrappers: find suspended coroutines and async
    # generators of streamer's own code and say where each waits.
    import types

    for obj in gc.get_objects():
        if isinstance(obj, types.CoroutineType | types.AsyncGeneratorType):
            frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None)
            if frame is not None and ("/streams.py" in frame.f_code.co_filename
                                      or "/streamer/" in frame.f_code.co_filename):
                log.warning("suspended %s (%s:%d) awaiting %r", frame.f_code.co_name,
                            frame.f_code.co_filename.rsplit("/", 2)[-1], frame.f_lineno,
                            getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None))
def _install_uvloop() -> None:
    """uvloop's event loop policy when installed: faust's per-message cost is mostly event-loop
    work; benchmarks/throughput.py measured a no-op faust agent at 18.0k vs 11.0k events/s and
    the naive peer at 4.8k vs 3.1k (same run, same broker). Installed as the policy, not passed
    as ``faust.Worker(loop=...)``: with an explicit loop the worker hung on SIGTERM."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()
