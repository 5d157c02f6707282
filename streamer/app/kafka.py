"""Kafka client settings, mapped once from :class:`~streamer.settings.KafkaSettings` for both
faust (``broker_credentials``) and aiokafka (keyword arguments)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from streamer.app.fetched_records import install_fetched_records
from streamer.events import InvalidEvent, internal_decoder
from streamer.settings import KafkaSettings

log = logging.getLogger(__name__)

# Every Kafka client of streamer takes its settings from here, so every aiokafka consumer of the
# process reads fetched batches this way: one record whose header key is not UTF-8, or a batch
# that cannot be parsed, no longer stops it for good (streamer.app.fetched_records). Refuses
# (FetchedRecordsUnsupported) an aiokafka other than the one its copies were taken from.
install_fetched_records()


def ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    """A TLS context for SSL / SASL_SSL, verifying brokers against ``ssl_cafile`` if given."""
    if k.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=k.ssl_cafile)
    if k.ssl_certfile:
        ctx.load_cert_chain(k.ssl_certfile, k.ssl_keyfile)
    return ctx


def aiokafka_kwargs(k: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` / the admin client.

    >>> aiokafka_kwargs(KafkaSettings(bootstrap_servers="h:1"))
    {'bootstrap_servers': 'h:1', 'security_protocol': 'PLAINTEXT'}
    >>> kw = aiokafka_kwargs(KafkaSettings(security_protocol="SASL_PLAINTEXT",
    ...     sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password="p"))
    >>> kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]
    ('SCRAM-SHA-256', 'u', 'p')
    """
    kw: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = k.sasl_mechanism or "PLAIN"
        kw["sasl_plain_username"] = k.sasl_username
        kw["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    ctx = ssl_context(k)
    if ctx is not None:
        kw["ssl_context"] = ctx
    return kw


async def start_client(client: Any) -> None:
    """``await client.start()`` for an aiokafka consumer, producer or admin client, which is
    stopped again when it fails to start. Why: aiokafka leaves a client that could not start
    (no broker at the bootstrap address, say) open, and reports it as unclosed at exit, after
    the error that matters."""
    try:
        await client.start()
    except BaseException:
        stop = getattr(client, "stop", None) or client.close  # the admin client closes
        await stop()
        raise


@contextlib.asynccontextmanager
async def admin_client(k: KafkaSettings) -> AsyncIterator[tuple[AIOKafkaAdminClient, str]]:
    """``(admin client, bootstrap servers)`` with ``k``'s connection settings, started (a
    clear error when the broker cannot be reached: :func:`start_client`) and closed after."""
    kw = aiokafka_kwargs(k)
    bootstrap = kw.pop("bootstrap_servers")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kw)
    await start_client(admin)
    try:
        yield admin, bootstrap
    finally:
        await admin.close()


class MissingTopicError(RuntimeError):
    """A topic a client reads does not exist on the broker. The worker creates streamer's
    topics when it starts, so on a fresh broker this is a step not taken yet, not a bug: the
    command line says so in one line (``topic`` names the topic)."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, *,
                           attempts: int = 50) -> list[TopicPartition]:
    """Every partition of ``topic``, in order. A topic just created may take a few metadata
    refreshes to show, so it asks up to ``attempts`` times, 0.1 s apart, before raising
    :class:`MissingTopicError`."""
    for attempt in range(attempts):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        await consumer._client.force_metadata_update()
        if attempt < attempts - 1:
            await asyncio.sleep(0.1)  # metadata of a topic being created
    raise MissingTopicError(topic)


def faust_credentials(k: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """faust's ``broker_credentials`` for the configured security protocol (None: plaintext)."""
    ctx = ssl_context(k)
    if k.security_protocol.startswith("SASL"):
        password = k.sasl_password.get_secret_value() if k.sasl_password else ""
        return faust.SASLCredentials(
            username=k.sasl_username or "",
            password=password,
            mechanism=k.sasl_mechanism or "PLAIN",
            ssl_context=ctx,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


def faust_broker_urls(k: KafkaSettings) -> list[str]:
    """``kafka://host:port`` URLs for faust from the bootstrap list."""
    return [f"kafka://{h.strip()}" for h in k.bootstrap_servers.split(",") if h.strip()]


class WireSchema(faust.Schema):  # type: ignore[type-arg]
    """A topic's keys and values as the bytes on the wire (``None`` for a null key or value),
    with nothing that can fail before an agent sees the message.

    streamer checks and decodes every value itself (``EventCodec``: the size limit first, then
    typed decoding; an invalid message goes to ``dead-letters``) and never reads a key: a key
    only routes (the storefront keys clicks and purchases by session). faust's own decoding
    did both less well. With ``key_type=str`` a key that is not UTF-8 (a binary session hash,
    say) raised ``KeyDecodeError`` inside faust, which threw it into the agent's stream: the
    agent crashed with the batch it had taken, the supervisor restarted it, the message itself
    was acknowledged without a dead letter, and the batch's good events were neither learned
    nor acknowledged, so the partition's commit stopped there. And per message faust's
    decoding went through its serializer registry and looked the event class up in the app's
    settings (~5 % of the worker's samples on ``benchmarks/throughput.py``): :meth:`compile`
    makes the event directly.

    >>> import asyncio
    >>> from faust.types import Message
    >>> topic = faust.App("doc", broker="kafka://127.0.0.1:9").topic("t", schema=WireSchema())
    >>> message = Message("t", 0, 0, 0.0, 0, [], b"\\xff\\xfe", None, None)
    >>> event = asyncio.run(topic.decode(message))
    >>> event.key, event.value
    (b'\\xff\\xfe', None)
    """

    def __init__(self) -> None:
        # Sending goes through faust as before: str keys (offer ids, policy versions) as UTF-8.
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw")

    def compile(self, app: Any, **_: Any) -> Any:
        """The topic's message-to-event function (faust calls nothing else of a schema when
        it reads): ``faust.Schema.compile``'s without its decoding of key and value, the only
        step that could fail (so its error callbacks are not needed), and with the event class
        read from the settings once, not per message."""
        event = app.conf.Event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return event(app, message.key, message.value, message.headers, message)

        return decode


#: The key a changelog record is read under when its own does not decode (TableSchema): a NUL
#: is in no id the codec lets through, so no table holds it.
SKIPPED_KEY = "\x00undecodable-changelog-key"


class TableSchema(faust.Schema):  # type: ignore[type-arg]
    """The schema of the worker's tables (str keys, bytes values), whose changelog messages
    become events without faust's serializer registry.

    faust updates a table's changelog topic to the table's key serializer, JSON, and every
    changelog message a worker reads (recovering after a restart or a rebalance, keeping its
    global tables current with the other workers' writes) went through faust's registry for
    the key and the value: ~5 us per message in process, against ~1 us here. The key is the
    JSON string faust's serializer would have loaded, the value the bytes; any other
    serializers (never the worker's) take faust's own path.

    A record whose key is no JSON string (not JSON, not UTF-8, nested too deep, another type:
    never one a worker writes) is logged and read as a tombstone of :data:`SKIPPED_KEY`, a key
    no table holds: applied, it changes nothing, and table recovery counts its offset. Neither
    of the two ways to fail here is safe. An error other than faust's ``KeyDecodeError``
    escaped faust's conductor and stopped the worker, and again on every restart (recovering
    the table meets the record again); ``KeyDecodeError`` is skipped by the conductor, but
    recovery never learns the skipped offset, so with the record last in its changelog
    partition a restarted worker waited for it for good, never ready.

    >>> import asyncio
    >>> from faust.types import Message
    >>> app = faust.App("doc", broker="kafka://127.0.0.1:9", store="memory://")
    >>> table = app.Table("t", schema=TableSchema(), key_type=str, value_type=bytes)
    >>> message = Message("doc-t-changelog", 0, 0, 0.0, 0, [], b'"tea"', b"1.5", None)
    >>> event = asyncio.run(table.changelog_topic.decode(message, propagate=True))
    >>> event.key, event.value
    ('tea', b'1.5')
    """

    def __init__(self) -> None:
        super().__init__(key_type=str, value_type=bytes, key_serializer="raw",
                         value_serializer="raw")

    def compile(self, app: Any, **kwargs: Any) -> Any:
        if (self.key_type, self.key_serializer, self.value_serializer) != (str, "json", "raw"):
            return super().compile(app, **kwargs)
        event = app.conf.Event
        load_key = internal_decoder(str)

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            key = message.key
            if key is not None:
                try:
                    key = load_key(key)
                except InvalidEvent as e:
                    log.warning("changelog record %s[%d]@%d skipped, its key is no JSON "
                                "string: %s", message.topic, message.partition,
                                message.offset, e)
                    key, message.value = SKIPPED_KEY, None  # the faust store's tombstone
            return event(app, key, message.value, message.headers, message)

        return decode


@functools.lru_cache(maxsize=1 << 16)
def key_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the Java client
    and aiokafka's ``DefaultPartitioner``): deterministic across processes, unlike ``hash()``.

    >>> from aiokafka.partitioner import DefaultPartitioner
    >>> parts = [0, 1, 2, 3]
    >>> all(key_partition(k, 4) == DefaultPartitioner()(k.encode(), parts, parts)
    ...     for k in ("tea", "cup", "SKU000001", "é"))
    True
    """
    return _key_hash(key) % partitions


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(key: str) -> int:
    # murmur2 is pure Python (~2 us for an item id); a purchase's items and offers' anchors
    # recur (popular items), so a bounded cache of their hashes pays.
    return int(murmur2(key.encode())) & 0x7FFFFFFF


TPLike = TypeVar("TPLike")  # faust's TP or aiokafka's TopicPartition: (topic, partition)


async def fetched_end_offsets(k: KafkaSettings, reported: Mapping[TPLike, int], *,
                              timeout_s: float = 10.0) -> dict[TPLike, int]:
    """End offsets as a fetch sees them, for partitions whose reported end (ListOffsets
    latest) may fall short; never lower than reported.

    Why: Tansu, the embedded broker, answers ListOffsets(latest) with the *base* offset of the
    last record batch plus one (100 records produced in one batch: end offset 1), while its
    fetch responses carry the right high watermark. faust recovers a table by reading its
    changelog up to that end offset, so a worker restarting against Tansu silently dropped the
    records of every changelog's last batch (measured with ``tests/crash_harness.py``: 48-59
    baskets of 12,413 lost over 5 kills, once writes were batched). A fetch from just below the
    reported end returns that batch and the true high watermark. Against Apache Kafka the two
    agree and this costs one fetch per partition when a worker recovers.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    result = dict(reported)
    wanted = {TopicPartition(getattr(tp, "topic"), getattr(tp, "partition")): tp  # noqa: B009
              for tp, end in reported.items() if end and end > 0}
    if not wanted:
        return result
    consumer = AIOKafkaConsumer(**aiokafka_kwargs(k), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="latest")
    await start_client(consumer)
    try:
        consumer.assign(list(wanted))
        for tp in wanted:
            consumer.seek(tp, reported[wanted[tp]] - 1)
        pending = set(wanted)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for tp in list(pending):
                records = batches.get(tp, [])
                highwater = consumer.highwater(tp)  # known once a fetch answered for tp
                if records or highwater is not None:
                    end = max([highwater or 0] + [r.offset + 1 for r in records])
                    result[wanted[tp]] = max(result[wanted[tp]], end)
                    pending.discard(tp)
            await asyncio.sleep(0)
        if pending:
            # The reported ends are kept for these: recovery may stop short of their last
            # batch (on the embedded broker), which the operator must be able to see.
            log.warning("no fetch answered within %.0f s for %d partition(s) (%s): their "
                        "reported end offsets are kept, and a table recovered from them may "
                        "miss their last record batch", timeout_s, len(pending),
                        ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending)))
    finally:
        await consumer.stop()
    return result

