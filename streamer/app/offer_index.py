"""The worker's index of published offers, by offer_id, for attribution.

Impressions carry only ``offer_id`` and ``variant``; the bundle items, anchor, segment and
policy version are in the offer. Offers are published keyed by *anchor* (by whichever worker
owns the anchor), impressions arrive keyed by *session*, so the offer of an impression is
usually on another partition and often another worker. Every worker therefore reads every
partition of ``offers`` (no consumer group, like the storefront's ``OfferCache``) into an
in-memory :class:`OfferIndex`:

- why not a faust GlobalTable keyed by offer_id? It would be a second, compacted copy of the
  offers topic (the changelog) that only grows by offer_id, written from the items agent;
  the offers topic already is that log, with the retention the storefront relies on.
- on start, :class:`OfferIndexFeed` seeks to ``now - ttl - attribution window - lateness``
  (``offsets_for_times``): older offers cannot match an impression that is still open. Brokers
  that ignore the timestamp (the embedded Tansu does) make it read from the beginning; expiry
  keeps the index bounded either way.
- an impression whose offer has not been indexed yet is not lost: the Attributor looks the
  offer up again when the impression closes (a window later).
- but a restarted worker may close impressions at once: its recovered event clock is already
  past them, and the events redelivered after the crash (or its first tick) close them. Had
  its feed not caught up yet, their offers would be unknown and the outcomes would lose their
  policy version, hence their place in the ledger (the crash harness saw 90 of ~5,000 so).
  :attr:`OfferIndexFeed.caught_up` is set once the feed has read every partition up to the
  high watermark of its first fetches; attribution waits for it (``RewardTracking``).
- an offer stamped further ahead of the reader's wall clock than ``max_ahead_ms`` (the
  worker's ``worker.max_event_ahead_s``, the bound its clicks and purchases are held to) is
  refused by the feed, counted and logged once: the index's clock is the newest offer's ``ts``,
  so one offer stamped in 2099 (the schema allows up to 2100) moved it there and evicted every
  offer indexed, and every later one as soon as it was added (attribution found no offer for a
  day, its retention).
- the feed fetches with the worker's ``kafka.fetch_max_wait_ms``, not aiokafka's own 500 ms:
  the embedded broker holds a fetch of several partitions for the whole wait, and until the
  feeds caught up the worker's first batch of events waited (the throughput benchmark's worker
  sat idle ~0.7 s right after its first batch when the feed waited 500 ms and the worker 20).
  Against it workers wait 20 ms (``streamer.app.broker.EMBEDDED_FETCH_MAX_WAIT_MS``); Kafka
  answers a fetch as data arrives, whatever the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer.app.kafka import aiokafka_kwargs, start_client, topic_partitions
from streamer.events import BundleOffer, EventCodec, InvalidEvent, check_not_ahead
from streamer.settings import KafkaSettings

log = logging.getLogger(__name__)


class OfferIndex:
    """Offers by offer_id, each kept until ``expires_at + retention_ms`` on the offers' clock.

    The clock is the newest offer ``ts`` seen (event time: offers are stamped with the time of
    the purchase that revised them), so a replay of old data expires old offers as it goes.
    ``retention_ms`` should be the attribution window plus allowed lateness: an impression
    shown just before its offer expired closes that much later. ``capacity`` is a hard bound
    on top (oldest expiry evicted first). Also keeps the newest offer per anchor, for the
    dashboard. Not thread-safe; owned by one event loop.

    >>> from streamer.events.models import Evidence, Variant
    >>> def offer(oid, anchor, ts):
    ...     v = Variant(items=[anchor, "b"], discount_pct=10.0, bundle_price=9.0,
    ...                 probability=1.0, score=1.0,
    ...                 evidence=Evidence(support=1.0, confidence=1.0, lift=1.0))
    ...     return BundleOffer(offer_id=oid, ts=ts, anchor_item_id=anchor, segment="all",
    ...                        policy_version="v1", variants=[v], expires_at=ts + 1_000)
    >>> t = 1_700_000_000_000
    >>> index = OfferIndex(retention_ms=500)
    >>> index.add(offer("o1", "a", t)); index.add(offer("o2", "a", t + 100))
    >>> index.get("o1").offer_id, index.newest("a").offer_id, len(index)
    ('o1', 'o2', 2)
    >>> index.add(offer("o3", "c", t + 1_550))  # o1 expired at t+1000, kept until t+1500
    >>> index.get("o1") is None, index.get("o2") is not None, len(index)
    (True, True, 2)
    """

    def __init__(self, *, retention_ms: int, capacity: int = 1_000_000) -> None:
        if retention_ms < 0 or capacity <= 0:
            raise ValueError("need retention_ms >= 0 and capacity > 0")
        self.retention_ms = retention_ms
        self.capacity = capacity
        self._offers: dict[str, BundleOffer] = {}
        self._by_anchor: dict[str, BundleOffer] = {}
        self._expiry: list[tuple[int, str]] = []
        self.clock_ms: int | None = None
        self.added = 0

    def add(self, offer: BundleOffer) -> None:
        """Index one offer (idempotent) and drop what has expired since."""
        if offer.offer_id not in self._offers:
            heapq.heappush(self._expiry, (offer.expires_at + self.retention_ms, offer.offer_id))
        self._offers[offer.offer_id] = offer
        self.added += 1
        current = self._by_anchor.get(offer.anchor_item_id)
        if current is None or (offer.ts, offer.offer_id) >= (current.ts, current.offer_id):
            self._by_anchor[offer.anchor_item_id] = offer
        if self.clock_ms is None or offer.ts > self.clock_ms:
            self.clock_ms = offer.ts
        self._evict()

    def _evict(self) -> None:
        while self._expiry and (
            len(self._offers) > self.capacity
            or (self.clock_ms is not None and self._expiry[0][0] <= self.clock_ms)
        ):
            _, offer_id = heapq.heappop(self._expiry)
            gone = self._offers.pop(offer_id, None)
            if gone is not None and self._by_anchor.get(gone.anchor_item_id) is gone:
                del self._by_anchor[gone.anchor_item_id]

    def get(self, offer_id: str) -> BundleOffer | None:
        """The offer with this id, or None (never seen, or expired)."""
        return self._offers.get(offer_id)

    def newest(self, anchor: str) -> BundleOffer | None:
        """The newest offer indexed for ``anchor``."""
        return self._by_anchor.get(anchor)

    def latest(self, n: int) -> list[BundleOffer]:
        """The ``n`` most recently published offers, one per anchor, newest first."""
        return sorted(self._by_anchor.values(), key=lambda o: (-o.ts, o.anchor_item_id))[:n]

    def __len__(self) -> int:
        return len(self._offers)


class OfferAhead(InvalidEvent):
    """An offer stamped further ahead of the reader's wall clock than the feed allows."""


class Index(Protocol):
    """What a feed fills: anything that adds decoded messages (:class:`OfferIndex`, the
    worker's ``streamer.engine.DecisionLog``)."""

    def add(self, value: Any, /) -> None: ...


class OfferIndexFeed:
    """Keeps an :class:`OfferIndex` fed from every partition of the offers topic (or, given
    ``decode``, any index from any topic read the same way: the worker's logged decisions).

    :meth:`run` blocks until cancelled; it retries the Kafka connection on failure (a worker
    must not die because this reader did). ``on_change`` is called after each batch.
    :attr:`caught_up` is set (and stays set) once every partition was read up to its high
    watermark: the offers published before the worker started are in the index. ``decode``
    turns a message's bytes into what ``index.add`` takes, raising ``InvalidEvent`` (default:
    an offer, validated by the codec and ``check_offer``, as the storefront's ``OfferCache``
    does: an offer it would not show is none an impression can be of; with ``max_ahead_ms``,
    also not stamped further ahead of the wall clock than that, else :class:`OfferAhead`).
    Offers refused for that are counted in :attr:`ahead` and logged once (a producer with a
    wrong clock writes many); other invalid messages in :attr:`invalid`, each logged.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, index: Index, *,
                 lookback_ms: int, on_change: Callable[[], None] | None = None,
                 decode: Callable[[bytes], Any] | None = None,
                 max_ahead_ms: int | None = None) -> None:
        self._kafka = kafka
        self.topic = topic
        self.index = index
        self.lookback_ms = lookback_ms
        self.invalid = 0
        self.ahead = 0
        self._codec = EventCodec(kafka.max_message_bytes)
        self._max_ahead_ms = max_ahead_ms
        self._decode = decode or self._decode_offer
        self._on_change = on_change
        self.caught_up = asyncio.Event()

    def _decode_offer(self, data: bytes) -> BundleOffer:
        offer = self._codec.decode_coherent_offer(data)
        if self._max_ahead_ms is not None:
            try:
                check_not_ahead(offer.ts, now_ms=int(time.time() * 1000),
                                max_ahead_ms=self._max_ahead_ms)
            except InvalidEvent as e:
                raise OfferAhead(e.kind, e.reason) from e
        return offer

    async def run(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup: log, wait, reconnect
                log.exception("offer index feed of %s failed; retrying", self.topic)
                await asyncio.sleep(2.0)  # back-off before reconnecting

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(**aiokafka_kwargs(self._kafka), enable_auto_commit=False,
                                    auto_offset_reset="earliest",
                                    fetch_max_wait_ms=self._kafka.fetch_max_wait_ms)
        await start_client(consumer)
        try:
            tps = await assign_all_partitions(consumer, self.topic)
            since = int(time.time() * 1000) - self.lookback_ms
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since))
            for tp in tps:
                at = found.get(tp)
                if at is None:
                    await consumer.seek_to_end(tp)  # nothing that recent: only new offers
                else:
                    consumer.seek(tp, at.offset)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        try:
                            self.index.add(self._decode(record.value or b""))
                        except OfferAhead as e:
                            self.ahead += 1
                            if self.ahead == 1:
                                log.warning("offer refused at %s[%d]@%d: %s; later offers "
                                            "refused so are only counted", record.topic,
                                            record.partition, record.offset, e)
                        except InvalidEvent as e:
                            self.invalid += 1
                            log.warning("invalid message at %s[%d]@%d: %s", record.topic,
                                        record.partition, record.offset, e)
                if batch and self._on_change is not None:
                    self._on_change()
                if not self.caught_up.is_set() and await _read_to_highwaters(consumer, tps):
                    self.caught_up.set()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()


async def _read_to_highwaters(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    """Whether every partition's position reached the high watermark its last fetch saw (a
    fetch answer's watermark, not ListOffsets: the embedded broker under-reports that)."""
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


async def assign_all_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` (waiting for a brand-new topic's metadata;
    :class:`~streamer.app.kafka.MissingTopicError` if it does not show)."""
    tps = await topic_partitions(consumer, topic, attempts=100)
    consumer.assign(tps)
    return tps
