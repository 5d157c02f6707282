"""The storefront client: ``OfferCache`` reads ``offers`` and samples variants to show.

A storefront team needs no Kafka expertise::

    async with OfferCache(settings.kafka, topic="offers") as cache:
        impression = cache.impression(anchor, user_id=..., session_id=...)
        if impression is not None:
            show(impression)          # and report it on the clicks topic

Also the Kafka side of the demo's simulated storefront.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from types import TracebackType

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamer.app.kafka import aiokafka_kwargs, start_client, topic_partitions
from streamer.events import ClickEvent, EventCodec, InvalidEvent, PurchaseEvent
from streamer.offers import Choice, OfferBook
from streamer.settings import KafkaSettings
from streamer.simulation import SimulatedShop

log = logging.getLogger(__name__)


class OfferCache:
    """Consumes every partition of the offers topic (no consumer group: each storefront
    instance keeps the whole book) and keeps the newest offer per anchor and segment.

    Runs a background task while entered; :meth:`choose` never blocks. ``default_segment`` is
    the workers' ``offers.segment``: its offers are shown to shoppers whose segment has none.
    An offer that fails decoding or :func:`~streamer.events.check_offer` (probabilities not
    summing to 1, a variant not led by the anchor) is logged, counted in :attr:`invalid` and
    never shown: its logged propensities would not be the ones sampled with. A failed fetch
    (a broker error aiokafka gives up on) is logged and counted in :attr:`errors`, and the
    task tries again after :attr:`RETRY_S`: the book keeps serving meanwhile, and a task that
    ended on the first error left it serving offers frozen until they expired, silently.
    """

    #: Seconds between a failed fetch and the next try.
    RETRY_S = 2.0

    def __init__(self, kafka: KafkaSettings, *, topic: str = "offers",
                 rng: random.Random | None = None, default_segment: str = "all") -> None:
        self._kafka = kafka
        self.topic = topic
        self.book = OfferBook(default_segment=default_segment)
        self.rng = rng or random.Random()
        self.invalid = 0
        self.errors = 0
        self._codec = EventCodec(kafka.max_message_bytes)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> OfferCache:
        consumer = AIOKafkaConsumer(**aiokafka_kwargs(self._kafka), enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await start_client(consumer)
        partitions = await self._partitions(consumer)
        consumer.assign([TopicPartition(self.topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="offer-cache")
        return self

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        return {tp.partition for tp in await topic_partitions(consumer, self.topic)}

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except Exception:  # not CancelledError (a BaseException): that is the exit
                self.errors += 1
                log.exception("fetching %s failed; trying again in %.0f s", self.topic,
                              self.RETRY_S)
                await asyncio.sleep(self.RETRY_S)
                continue
            changed = False
            for records in batch.values():
                for record in records:
                    try:
                        offer = self._codec.decode_coherent_offer(record.value or b"")
                    except InvalidEvent as e:
                        self.invalid += 1
                        log.warning("invalid offer at %s[%d]@%d: %s", record.topic,
                                    record.partition, record.offset, e)
                        continue
                    changed |= self.book.update(offer)
            if changed:
                async with self._changed:
                    self._changed.notify_all()

    async def wait_for(self, predicate: object, timeout_s: float) -> None:
        """Wait until ``predicate(book)`` is true (raises TimeoutError)."""
        assert callable(predicate)

        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.book))

        await asyncio.wait_for(_wait(), timeout_s)

    def choose(self, anchor: str, rng: random.Random | None = None, *,
               segment: str | None = None) -> Choice | None:
        """Sample a variant of the live offer for ``anchor`` and the shopper's ``segment``
        (falling back to the default segment's offer; None when there is none)."""
        return self.book.choose(anchor, rng or self.rng, now_ms=int(time.time() * 1000),
                                segment=segment)

    def impression(self, anchor: str, *, user_id: str, session_id: str,
                   segment: str | None = None) -> ClickEvent | None:
        """Sample a variant for a shopper of ``segment`` and return the impression event to
        report (or None)."""
        choice = self.choose(anchor, segment=segment)
        if choice is None:
            return None
        return ClickEvent(
            event_id=uuid.uuid4().hex, ts=int(time.time() * 1000), user_id=user_id,
            session_id=session_id, item_id=anchor, kind="offer_impression",
            offer_id=choice.offer.offer_id, variant=choice.variant,
            propensity=choice.propensity)


class StorefrontDriver:
    """Runs a :class:`SimulatedShop` against Kafka: events out, offers in through OfferCache."""

    def __init__(self, kafka: KafkaSettings, shop: SimulatedShop, *, clicks_topic: str,
                 purchases_topic: str, offers_topic: str, sessions_per_s: float,
                 malformed_share: float = 0.005, default_segment: str = "all") -> None:
        self.kafka = kafka
        self.shop = shop
        self.clicks_topic = clicks_topic
        self.purchases_topic = purchases_topic
        self.offers_topic = offers_topic
        self.sessions_per_s = sessions_per_s
        self.malformed_share = malformed_share
        self.default_segment = default_segment
        self.sent: dict[str, int] = {clicks_topic: 0, purchases_topic: 0}
        self.malformed_sent = 0
        self.impressions = 0
        self.cache: OfferCache | None = None
        self._encode = msgspec.json.Encoder().encode

    async def run(self, duration_s: float) -> None:
        producer = AIOKafkaProducer(**aiokafka_kwargs(self.kafka), linger_ms=5)
        await start_client(producer)
        try:
            async with OfferCache(self.kafka, topic=self.offers_topic,
                                  default_segment=self.default_segment) as cache:
                self.cache = cache
                await self._loop(producer, cache, duration_s)
        finally:
            await producer.stop()

    async def _loop(self, producer: AIOKafkaProducer, cache: OfferCache,
                    duration_s: float) -> None:
        rng = self.shop.rng
        start = time.monotonic()
        sessions = 0
        while (elapsed := time.monotonic() - start) < duration_s:
            due = int(elapsed * self.sessions_per_s) - sessions
            for _ in range(max(0, due)):
                sessions += 1
                now = int(time.time() * 1000)
                visit = self.shop.visit(now_ms=now, choose=lambda s, r: cache.choose(
                    s.anchor, r, segment=s.segment.name))
                for ev in visit.events:
                    topic = self.purchases_topic if isinstance(ev, PurchaseEvent) else \
                        self.clicks_topic
                    if isinstance(ev, ClickEvent) and ev.kind == "offer_impression":
                        self.impressions += 1
                    await producer.send(topic, self._encode(ev), key=ev.session_id.encode())
                    self.sent[topic] += 1
                if rng.random() < self.malformed_share:
                    # A broken client now and then: the worker must dead-letter it and go on.
                    bad = rng.choice([b"{not json", b'{"event_id": 3}', b"\xff\xfe"])
                    await producer.send(rng.choice(list(self.sent)), bad, key=b"broken")
                    self.malformed_sent += 1
            await asyncio.sleep(0.02)  # pacing the simulated traffic, not synchronisation
        await producer.flush()
