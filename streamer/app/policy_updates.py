"""Workers follow ``policy-updates`` and hot-swap their engine's policy.

Why a plain background consumer and not a faust agent: every worker must see every record
(each one serves offers for its own partitions with the live version), while an agent's
consumer group would hand each record to one worker only. So each worker reads every
partition without a group, from the beginning (the topic is small: one checkpoint of tens of
KB per promotion), and replays the history to the current live version at start-up, then
follows it. The records share one key, so they sit in one partition, in publication order.

Decoding a checkpoint (safetensors, a few dozen KB, checked for finite weights and a matching
hash) takes about a millisecond: done on the event loop, between two events, which is also
what makes the swap atomic with respect to the agents (see ``Engine.set_policy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer.app.kafka import aiokafka_kwargs, start_client, topic_partitions
from streamer.engine import Engine
from streamer.observability import Metrics
from streamer.online import FEATURE_NAMES
from streamer.settings import Settings

if TYPE_CHECKING:
    from streamer.app.factory import StreamerApp
    from streamer.policy import PolicyChange, PolicyVersions

log = logging.getLogger(__name__)


class PolicyFollower:
    """Applies ``policy-updates`` records to an engine. :meth:`apply` is pure apart from the
    swap (testable without Kafka); :meth:`run` is the consumer loop."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.base = Engine.v0_policy(engine.config)
        self._versions: PolicyVersions | None = None

    @property
    def versions(self) -> PolicyVersions:
        """The version registry; its first use imports torch (seconds), so a worker that never
        sees a learned version starts and serves without it."""
        if self._versions is None:
            from streamer.policy import PolicyVersions, select_device

            # Serving runs torch on the CPU with one thread: a decision is a few dozen rows,
            # where a second OpenMP thread spin-waiting on a busy core made each forward pass
            # ~100x slower.
            select_device("cpu", max_threads=1)
            # offers.max_variants bounds every version served, not only v0's.
            self._versions = PolicyVersions(base_version=self.base.version,
                                            features=FEATURE_NAMES,
                                            max_variants=self.settings.offers.max_variants)
        return self._versions

    def apply(self, data: bytes) -> PolicyChange | None:
        """Adopt the version a record makes live (None, and nothing changes, when refused:
        non-finite or tampered weights, features the engine's featurizer does not provide,
        a rollback to an unknown version)."""
        try:
            change = self.versions.apply(data)
        except ValueError as e:
            self.metrics.policy_refused.inc()
            log.warning("policy update refused: %s", e)
            return None
        previous = self.engine.set_policy(change.policy or self.base)
        self.metrics.policy_adoptions.labels(change.version).inc()
        log.info("policy %s -> %s (%s)", previous, change.version, change.kind)
        return change

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        topic = self.settings.topics.policy_updates
        consumer = AIOKafkaConsumer(**aiokafka_kwargs(self.settings.kafka),
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await start_client(consumer)
        try:
            partitions: set[int] = set()
            while not partitions:
                partitions = consumer.partitions_for_topic(topic) or set()
                if not partitions:
                    await consumer._client.force_metadata_update()  # a brand-new topic
                    await asyncio.sleep(0.5)  # waiting for the topic's metadata
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            await consumer.seek_to_beginning()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                if batches and self._versions is None:
                    # Import torch off the event loop before the first record needs it.
                    await asyncio.to_thread(lambda: self.versions)
                for records in batches.values():
                    for record in records:
                        self.apply(bytes(record.value or b""))
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()


def install_policy_follower(sa: StreamerApp) -> PolicyFollower:
    """Start following ``policy-updates`` when the worker starts (a faust app task)."""
    follower = PolicyFollower(sa.settings, sa.engine, sa.metrics)

    async def follow_policy_updates(*_: Any) -> None:
        await follower.run()

    sa.app.task(follow_policy_updates)
    return follower


def no_versions(settings: Settings) -> PolicyVersions:
    """The registry before any record: v0 live, what a worker starts on."""
    from streamer.policy import PolicyVersions

    return PolicyVersions(base_version=Engine.v0_policy(_engine_config(settings)).version,
                          features=FEATURE_NAMES)


async def read_versions(settings: Settings, *, timeout_s: float = 30.0) -> PolicyVersions:
    """Every record of ``policy-updates`` up to its current end, applied in order (what a
    worker starting now would adopt). Records it refuses are counted in ``rejected``.
    :class:`~streamer.app.kafka.MissingTopicError` when the topic does not exist (no worker
    has run against this broker yet)."""
    topic = settings.topics.policy_updates
    versions = no_versions(settings)
    consumer = AIOKafkaConsumer(**aiokafka_kwargs(settings.kafka), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await start_client(consumer)
    try:
        assigned = await topic_partitions(consumer, topic, attempts=2)
        consumer.assign(assigned)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(assigned)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s} s")
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    with contextlib.suppress(ValueError):
                        versions.apply(bytes(record.value or b""))
    finally:
        await consumer.stop()
    return versions


async def publish_rollback(settings: Settings, version: str, *, reason: str = "") -> bool:
    """Publish a rollback to ``version``; raises ``ValueError`` when ``version`` is neither
    the base version nor one on the topic that workers would have adopted. Publishes nothing
    and returns False when ``version`` is live already: the record would change nothing but
    the topic's history, which is kept forever."""
    from aiokafka import AIOKafkaProducer

    from streamer.policy import rollback_record

    versions = await read_versions(settings)
    if not versions.knows(version):
        known = ", ".join(v.version for v in versions.versions())
        raise ValueError(f"unknown version {version!r}; known: {known}")
    if versions.live_version == version:
        return False
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings.kafka))
    await start_client(producer)
    try:
        await producer.send_and_wait(settings.topics.policy_updates,
                                     rollback_record(version, reason=reason), key=b"policy")
    finally:
        await producer.stop()
    return True


def _engine_config(settings: Settings) -> Any:
    from streamer.app.factory import engine_config

    return engine_config(settings)
