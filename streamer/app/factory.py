"""The composition root: one faust app, thin agents, the engine behind them.

Agents decode, call the engine, send. Everything they call is plain Python tested without faust.

Topology::

    clicks ──► clicks agent ──(co-view/co-cart, when weighted)─► <app>-item-baskets
                            └─(invalid)──────────────────────────► dead-letters
    purchases ► purchases agent ─(fan out by item)─► <app>-item-baskets
                                 └─(invalid)─────────────────────► dead-letters
    <app>-item-baskets ► items agent (co-purchase state, dedup) ──► offers (keyed by anchor)
    clicks, purchases ──► reward tracking (streamer.app.rewards_agents) ──► feedback, rewards

The repartition on item puts each item's state on the worker that owns the item, so workers
scale by partitions and a table key is only ever written from its own partition. Where the
purchases agent's worker owns an anchor's item-baskets partition too, it learns the basket
itself, writing to that same partition, once nothing older can still come through the topic
(:mod:`streamer.app.local_baskets`; ``worker.local_baskets``).

Batches, because faust's cost is per message: the clicks, purchases and items agents take up
to ``worker.batch_max`` messages at a time (waiting at most ``worker.batch_linger_ms``); the
purchases agent sends a batch's baskets as one message per item-baskets partition (its
anchors' partition, Kafka's default partitioner). Table writes wait in a
:class:`~streamer.app.tables.WriteBuffer` until the next offset commit, which writes them and
waits until the broker has them and every message the agents sent before it commits, so a
hot key costs one changelog record per commit interval.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import faust
import msgspec
from aiohttp import web
from faust.types import TP
from faust.types.settings import Settings as FaustSettings
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamer.app.batching import take_batches
from streamer.app.crashes import AgentCrashes
from streamer.app.dashboard import DASHBOARD_HTML, dashboard_data
from streamer.app.fast_consumer import FastConsumer, install_fast_consumer
from streamer.app.fast_recovery import install_fast_recovery
from streamer.app.fetched_records import SkippedBatch
from streamer.app.kafka import (
    TableSchema,
    WireSchema,
    faust_broker_urls,
    faust_credentials,
    fetched_end_offsets,
    key_partition,
)
from streamer.app.local_baskets import LocalBaskets
from streamer.app.policy_updates import install_policy_follower
from streamer.app.price_sweep import PriceSweep
from streamer.app.rewards_agents import RewardTracking, install_reward_tracking, update_lag
from streamer.app.state_pages import install_state_pages
from streamer.app.tables import ChangelogRecord, ChangelogSender, WriteBuffer, store_of
from streamer.copurchase import Decayed, SessionItems
from streamer.engine import (
    Engine,
    EngineConfig,
    EngineState,
    ItemBasket,
    ItemRecord,
    OfferDecision,
    encode_decision,
    logged_decision,
)
from streamer.events import (
    BundleOffer,
    ClickEvent,
    DeadLetter,
    EventCodec,
    InvalidEvent,
    check_click,
    check_not_ahead,
    internal_decoder,
)
from streamer.events.dedup import Deduplicator, SeenId
from streamer.events.models import Price
from streamer.observability import Metrics
from streamer.online import DriftMonitor
from streamer.rewards import ImpressionOutcome, RewardAttribution, learning_reward
from streamer.settings import Settings

log = logging.getLogger(__name__)

_DEAD_LETTER_VALUE_LIMIT = 64 * 1024
def _cut(data: bytes, limit: int, what: str, reason: str) -> tuple[bytes, str]:
    """``data`` cut to ``limit`` bytes for a dead letter, and ``reason`` saying so if it was.

    >>> _cut(b"abcdef", 4, "value", "not json")
    (b'abcd', 'not json (value truncated to 4 of 6 bytes)')
    """
    if len(data) <= limit:
        return data, reason
    return data[:limit], f"{reason} ({what} truncated to {limit} of {len(data)} bytes)"


#: A message's key is kept up to this many bytes in its dead letter (as the letter's own key
#: and in ``key_b64``): the broker takes keys up to its message size, and a letter carrying a
#: 450 KB key twice (once base64) outgrew the producer's request size, so the agent raised on
#: the letter meant to set that message aside, on every restart.
_DEAD_LETTER_KEY_LIMIT = 1024
#: faust's stream buffer size unless set (4,096): the events an agent's stream holds.
STREAM_BUFFER_DEFAULT: int = (
    FaustSettings.stream_buffer_maxsize.default)  # type: ignore[attr-defined]


#: Largest item-baskets message the purchases agent sends, encoded: under faust's producer
#: request limit (1,000,000 bytes) and Kafka's default ``message.max.bytes`` (1 MiB). A basket
#: lists its anchor's partners, so an order of 200 lines with long ids fans out to ~13 KB per
#: basket, ~2.6 MB per order: one message per partition per batch failed to send
#: (``MessageSizeTooLargeError``), which crashed the agent with its batch.
BASKETS_MESSAGE_MAX_BYTES = 512 * 1024


def basket_messages(baskets: list[Any], encode: Callable[[list[Any]], bytes], *,
                    limit: int = BASKETS_MESSAGE_MAX_BYTES) -> list[tuple[list[Any], bytes]]:
    """``baskets`` as consecutive messages of at most ``limit`` encoded bytes each, in order:
    ``(baskets, encoded)`` pairs; one message in the common case (encoded once), halves until
    they fit otherwise (a single basket goes alone whatever its size).

    >>> enc = lambda xs: ",".join(xs).encode()
    >>> [part for part, _ in basket_messages(["aaaa", "bbbb", "cccc"], enc, limit=9)]
    [['aaaa'], ['bbbb', 'cccc']]
    >>> basket_messages(["aaaa", "bbbb"], enc, limit=9)
    [(['aaaa', 'bbbb'], b'aaaa,bbbb')]
    """
    data = encode(baskets)
    if len(data) <= limit or len(baskets) <= 1:
        return [(baskets, data)]
    half = len(baskets) // 2
    return (basket_messages(baskets[:half], encode, limit=limit)
            + basket_messages(baskets[half:], encode, limit=limit))


def _on_baskets_sent(route: LocalBaskets, partition: int, generation: int, barrier: bool,
                     future: Any) -> None:
    """Tell ``route`` where a basket message landed (or that it failed)."""
    if future.cancelled() or future.exception() is not None:
        route.failed(partition, generation=generation)
    else:
        route.sent(partition, offset=future.result().offset, generation=generation,
                   barrier=barrier)


def engine_config(settings: Settings) -> EngineConfig:
    """Map the settings tree onto the engine's plain values."""
    o, w, c = settings.offers, settings.worker, settings.copurchase
    # v0 shows its pairs and triples (max_pairs + max_triples): at most offers.max_variants,
    # a pair among them (max_variants 1 with a triple each used to show 2).
    triples = min(c.max_triples, o.max_variants - 1)
    return EngineConfig(
        half_life_s=c.half_life_days * 86_400.0,
        top_k=c.top_k,
        max_partner_entries=c.max_partner_entries,
        max_pairs=o.max_variants - triples,
        max_triples=triples,
        top_k_triples=c.top_k_triples,
        triple_partners=c.triple_partners,
        min_support=o.min_support,
        min_interval_ms=int(o.min_interval_s * 1000),
        max_recheck_interval_ms=int(o.max_recheck_interval_s * 1000),
        offer_ttl_ms=int(o.ttl_s * 1000),
        min_change=o.min_change,
        segment=o.segment,
        segments=o.segment_names,
        epsilon=o.epsilon,
        discount_pct=o.discount_pct,
        dedup_ttl_ms=int(w.dedup_ttl_s * 1000),
        dedup_capacity=w.dedup_capacity,
        co_view_weight=c.co_view_weight,
        co_cart_weight=c.co_cart_weight,
        offer_purchase_weight=c.offer_purchase_weight,
        session_gap_ms=int(c.session_gap_s * 1000),
        session_max_items=c.session_max_items,
        session_capacity=c.session_capacity,
    )


class DecisionOutbox:
    """The engine's logged decisions waiting for the agent whose learning made them to publish
    them with their offers (a ``streamer.engine.DecisionSink``). Owned by the worker's event
    loop; an agent takes them right after it learned, before it awaits anything."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[OfferDecision] = []

    def add(self, decision: OfferDecision) -> None:
        self._pending.append(decision)

    def take(self) -> list[OfferDecision]:
        """Every decision added since the last call, oldest first."""
        taken, self._pending = self._pending, []
        return taken


@dataclass
class StreamerApp:
    """The faust app and what its agents share; built by :func:`create_app`."""

    app: faust.App
    settings: Settings
    engine: Engine
    click_dedup: Deduplicator
    metrics: Metrics
    codec: EventCodec
    rewards: RewardTracking
    buffer: WriteBuffer
    #: Guards the agents: a crash stops the worker (streamer.app.crashes).
    crashes: AgentCrashes
    #: ``await dead_letter(message, error)``: sets a message aside on ``dead-letters``.
    dead_letter: Callable[[Any, InvalidEvent], Awaitable[None]]
    ready: bool = False


def learn_outcome(engine: Engine, outcome: ImpressionOutcome, offer: BundleOffer | None,
                  decision: OfferDecision | None, attribution: RewardAttribution) -> bool:
    """Teach ``engine``'s conversion model one closed impression of this worker; True when its
    reward revealed a drift of its policy version's rewards (the model then forgot its
    per-bundle history: ``Engine.learn_conversion``).

    The learned policy reads ``engine.conversion`` as a feature: it must learn from this
    worker's outcomes, as the trainer's model learns from all feedback (the same features: the
    logged decision's, else ``streamer.engine.logged_decision``'s rebuild), or serving and
    training disagree. Labelled as the trainer labels it (``attribution``, the
    ``policy.reward_attribution`` setting): by default a basket that merely held the bundle is
    not a conversion of the offer. An outcome whose offer is unknown teaches nothing."""
    if offer is None or not 0 <= outcome.variant < len(offer.variants):
        return False
    reward, converted = learning_reward(outcome, attribution)
    try:
        if decision is not None:  # the features the policy scored when it made the offer
            logged = decision.logged(outcome.variant, outcome.propensity, reward)
        else:  # rebuilt from the offer with today's prices (counted by publish_outcomes)
            catalog = engine.state.catalog
            prices = {i: p for v in offer.variants for i in v.items
                      if (p := catalog.get(i)) is not None}
            logged = logged_decision(
                {"offer_id": outcome.offer_id, "variant": outcome.variant,
                 "propensity": outcome.propensity, "reward": reward,
                 "ts": outcome.ts, "segment": outcome.segment}, offer, prices=prices,
                segments=engine.config.segments)
    except ValueError:
        return False
    return engine.learn_conversion(logged.variant_features[logged.chosen], converted,
                                   outcome.clicked, reward=reward,
                                   policy_version=outcome.policy_version)


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> StreamerApp:
    """Build the faust app for ``settings``. Nothing connects until the worker starts."""
    k, t, w = settings.kafka, settings.topics, settings.worker
    app = faust.App(
        w.app_id,
        broker=faust_broker_urls(k),
        broker_credentials=faust_credentials(k),
        store="memory://",
        datadir=w.data_dir,
        topic_partitions=t.partitions,
        topic_replication_factor=t.replication_factor,
        broker_session_timeout=k.session_timeout_s,
        broker_rebalance_timeout=k.rebalance_timeout_s,
        broker_heartbeat_interval=k.heartbeat_interval_s,
        broker_commit_interval=w.commit_interval_s,
        table_standby_replicas=w.standby_replicas,
        consumer_auto_offset_reset="earliest",
        # The embedded broker rejects InitProducerId; at-least-once + idempotent state instead.
        processing_guarantee="at_least_once",
        web_enabled=True,
        web_bind=w.web_host,
        web_host=w.web_host,
        web_port=w.web_port,
        web_in_thread=False,
        # A commit sends every changelog record written since the last one (13-28k at ~5k
        # purchases/s), one batch per partition per request and a request at a time: in
        # faust's 16 KiB batches that took 0.13-0.61 s of round trips, in 512 KiB batches
        # 0.06-0.24 s, and the worker got through 1.12-1.22x the purchases per second
        # (benchmarks/throughput.py --ref: per-repeat medians of two runs, 10 of 12 repeats
        # in favour; 1.05x with a live stream's timestamps, 4 of 5).
        producer_max_batch_size=k.producer_batch_bytes,
        # A batch is taken from the stream's buffer (streamer.app.batching): faust's default
        # size unless a batch may be larger.
        stream_buffer_maxsize=max(STREAM_BUFFER_DEFAULT, w.batch_max),
    )
    # Messages reach the agents without faust's per-message tasks (2.3x less CPU for faust's
    # share), and tables recover up to the end offsets a fetch sees (the embedded broker
    # under-reports them): streamer.app.fast_consumer, streamer.app.kafka.
    # faust fixes the broker's fetch wait at 1.5 s; the embedded broker then holds every fetch
    # of an idle partition that long, data or not: each hop added up to 1.5 s of latency.
    # Every offset commit first makes the agents' table writes (and messages) durable.
    sender = ChangelogSender(app)  # changelog records and offers, in batches
    buffer = WriteBuffer(sender, cache_size=w.table_cache_size)
    metrics = metrics or Metrics()

    def stop_when_dropped(exc: BaseException) -> None:
        # Dropped by the group, the worker stops as after an agent crash and recovers its
        # tables when restarted (FastConsumer._still_member).
        metrics.group_drops.inc()
        if crashes.on_crash is not None:
            crashes.on_crash("consumer", exc)

    baskets_name = f"{w.app_id}-item-baskets"  # internal: each anchor's slice of an order
    install_fast_consumer(app, end_offsets_check=functools.partial(fetched_end_offsets, k),
                          fetch_max_wait_ms=k.fetch_max_wait_ms, before_commit=buffer.write,
                          on_suspended=metrics.suspended_deliveries.inc,
                          on_dropped=stop_when_dropped,
                          # A batch nobody can parse: its offsets skipped, one dead letter.
                          on_skipped_batch=lambda skipped: dead_letter_batch(skipped),
                          # Commits every commit_interval_s only, not also every 10,000 events
                          # (faust's broker_commit_every): FastConsumer.count_commits.
                          count_commits=False,
                          # Straight from the drain loop to the agent: batching.DirectQueue.
                          direct_topics=(t.clicks, t.purchases, baskets_name))
    install_fast_recovery(app)  # tables recover without a per-message scan of every partition
    codec = EventCodec(max_message_bytes=k.max_message_bytes)
    clicks_topic = app.topic(t.clicks, schema=WireSchema())
    purchases_topic = app.topic(t.purchases, schema=WireSchema())
    offers_topic = app.topic(t.offers, schema=WireSchema())
    dead_letters_topic = app.topic(t.dead_letters, schema=WireSchema())
    baskets_topic = app.topic(baskets_name, internal=True, schema=WireSchema())

    def table(name: str, *, global_: bool = False, help: str) -> Any:
        factory = app.GlobalTable if global_ else app.Table
        # value_type=bytes too: faust picks the serializer used when *recovering* from the
        # changelog from value_type, not from the schema (json otherwise: lists, not bytes).
        # A schema per table: faust updates a table's schema to its changelog's serializers.
        return factory(name, schema=TableSchema(), key_type=str, value_type=bytes, help=help)

    # An anchor's statistics and the ids of the events learned into them: one value, so one
    # changelog message, so a crash recovers both or neither (engine.ItemRecord).
    items_t = table("items", help="Co-purchase state and recent event ids per anchor item.")
    offers_t = table("live-offers", help="Last offer published per anchor.")
    # Item popularity and prices are read for partners owned by other workers: global tables.
    counts_t = table("item-counts", global_=True, help="Decayed purchase counts per item.")
    catalog_t = table("catalog", global_=True, help="Last seen unit price per item.")
    seen_clicks_t = table("seen-clicks", help="De-duplication of click event ids.")
    seen_purchases_t = table("seen-purchases", help="De-duplication of purchase event ids.")
    sessions_t = table("sessions", help="Items each session viewed or carted (co-view/co-cart).")

    state = EngineState(
        items=buffer.table(items_t, ItemRecord),
        counts=buffer.table(counts_t, Decayed),
        catalog=buffer.table(catalog_t, Price),  # out of bounds: undecodable, read as absent
        offers=buffer.table(offers_t, BundleOffer),
        # Purchases by event id (Engine.accept, in the purchases agent); clicks by click_dedup.
        seen=buffer.table(seen_purchases_t, SeenId),
        sessions=buffer.table(sessions_t, SessionItems),
    )
    config = engine_config(settings)
    # Every offer's decision, logged when it is made; the items agent publishes them with the
    # offers to <app>-decisions, which every worker reads (streamer.app.rewards_agents).
    decision_outbox = DecisionOutbox()
    # Learning updates an anchor's tables in place between flushes of the write-back (copied
    # once per flush, not once per basket); a flush hands the values to the tables' caches.
    engine = Engine(config, state, Engine.v0_policy(config), decisions=decision_outbox,
                    drift=DriftMonitor(), in_place_learning=True)
    buffer.after_flush.append(engine.release_learned)
    click_dedup = Deduplicator(
        buffer.table(seen_clicks_t, SeenId),
        ttl_ms=int(w.dedup_ttl_s * 1000),
        capacity=w.dedup_capacity,
    )
    encode = msgspec.json.Encoder().encode

    async def post(letter: DeadLetter, key: bytes | None) -> None:
        """Send ``letter`` to ``dead-letters``, durable before the next offset commit (a
        letter lost in flight would leave no trace of its message once its offset is
        committed), and count it."""
        metrics.dead_letters.labels(letter.source_topic, letter.kind).inc()
        buffer.defer(await dead_letters_topic.send(key=key, value=encode(letter)))

    async def dead_letter(message: Any, error: InvalidEvent) -> None:
        """Set ``message`` aside on ``dead-letters`` with ``error``'s reason."""
        value, reason = _cut(bytes(message.value or b""), _DEAD_LETTER_VALUE_LIMIT, "value",
                             error.reason[:900])
        key = bytes(message.key) if message.key else None
        if key is not None:
            key, reason = _cut(key, _DEAD_LETTER_KEY_LIMIT, "key", reason)
        log.warning("dead letter from %s[%d]@%d: %s", message.topic, message.partition,
                    message.offset, reason)
        await post(DeadLetter(
            ts=int(time.time() * 1000),
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            kind=error.kind,
            reason=reason,
            value_b64=base64.b64encode(value).decode(),
            key_b64=base64.b64encode(key).decode() if key else None,
        ), key)

    async def dead_letter_batch(skipped: SkippedBatch) -> None:
        """One dead letter for a record batch the consumer could not parse and skipped
        (streamer.app.fetched_records): its offsets, the error, its bytes (truncated as a
        message's value is)."""
        value, reason = _cut(skipped.data, _DEAD_LETTER_VALUE_LIMIT, "batch",
                             skipped.error[:900])
        await post(DeadLetter(
            ts=int(time.time() * 1000),
            source_topic=skipped.topic,
            partition=skipped.partition,
            offset=skipped.first_offset,
            last_offset=skipped.last_offset,
            kind="unreadable_batch",
            reason=reason,
            value_b64=base64.b64encode(value).decode(),
        ), None)

    def learn_conversion(outcome: ImpressionOutcome, offer: BundleOffer | None,
                         decision: OfferDecision | None) -> None:
        if learn_outcome(engine, outcome, offer, decision, settings.policy.reward_attribution):
            metrics.reward_drifts.labels("worker", outcome.policy_version).inc()
            log.info("reward drift under %s: the conversion model forgot its per-bundle "
                     "history (kept %.0f%%)", outcome.policy_version,
                     100 * engine.conversion.drift_keep)

    # An agent that raises stops the worker, which commits nothing more (streamer.app.crashes).
    crashes = AgentCrashes(metrics, refuse_commits=lambda exc: cast(
        FastConsumer, app.consumer).refuse_commits(exc))
    # The price sweep (streamer.app.price_sweep): a timer checks a slice of this worker's live
    # offers against the catalogue, and each partition's reward tick revises its anchors found
    # quoting a stale bundle price, at the partition's event time.
    price_check_s = settings.offers.price_check_interval_s
    offers_store = store_of(offers_t)  # a snapshot per pass: list() of the store's dict
    sweep = PriceSweep(keys=lambda: list(offers_store), stale=engine.stale_anchors,
                       partition_of=lambda anchor: key_partition(anchor, t.partitions),
                       steps_per_pass=max(1, round(price_check_s
                                                   / settings.rewards.tick_interval_s)))

    async def reprice(partition: int, event_ms: int | None) -> list[Any]:
        """Revise the anchors of ``partition`` the sweep found stale (the partition's tick:
        its table writes go to its changelog partition) and publish what changed as the items
        agent does; returns the futures of the messages sent."""
        anchors = sweep.take(partition)
        if not anchors:
            return []
        buffer.partition = partition
        offers = engine.reprice(anchors, -1 if event_ms is None else event_ms)
        decisions = decision_outbox.take()  # before anything is awaited (see learn)
        metrics.offers_repriced.inc(len(offers))
        return await publish_offers(offers, decisions)

    rewards = install_reward_tracking(app, settings, metrics, table, buffer,
                                      on_outcome=learn_conversion, dead_letter=dead_letter,
                                      guard=crashes.guard,
                                      after_tick=reprice if price_check_s else None)
    sa = StreamerApp(app, settings, engine, click_dedup, metrics, codec, rewards, buffer,
                     crashes, dead_letter)
    install_policy_follower(sa)  # hot-swaps engine.policy on policy-updates
    install_state_pages(sa)  # /state/items/: the co-purchase state dump the crash tests read

    # Internal, written by the purchases agent; anything else (an old format, a stray
    # producer) is dead-lettered rather than stopping the agent on it.
    decode_baskets = internal_decoder(list[ItemBasket])
    batch_max, linger_s = w.batch_max, w.batch_linger_ms / 1000.0
    partitions = t.partitions
    basket_dups = metrics.duplicates.labels(baskets_name)

    max_ahead_ms = round(w.max_event_ahead_s * 1000)

    def decode_click(data: bytes) -> ClickEvent:
        click = codec.decode_click(data)
        check_click(click)  # an offer event without what attribution needs is dead-lettered
        return click

    async def decoded(messages: list[Any], decode: Any,
                      now_ms: int | None = None) -> AsyncIterator[tuple[Any, Any]]:
        """``(message, decoded event)`` for each valid message; invalid ones dead-lettered,
        and with ``now_ms`` (the worker's clock) those stamped too far ahead of it too."""
        for message in messages:
            try:
                value = decode(message.value)
                if now_ms is not None:
                    check_not_ahead(value.ts, now_ms=now_ms, max_ahead_ms=max_ahead_ms)
            except InvalidEvent as e:
                await dead_letter(message, e)
                continue
            yield message, value

    def by_partition(baskets: list[ItemBasket]) -> dict[int, list[ItemBasket]]:
        """``baskets`` by their anchors' item-baskets partition, in event order."""
        parts: dict[int, list[ItemBasket]] = {}
        for basket in baskets:
            parts.setdefault(key_partition(basket.anchor, partitions), []).append(basket)
        return parts

    async def send_baskets(baskets: list[ItemBasket]) -> list[Any]:
        """Send ``baskets`` to the anchors' item-baskets partitions, one message per partition
        in event order (faust's cost is per message); returns the futures of their delivery."""
        return [await baskets_topic.send(value=data, partition=partition)
                for partition, part in by_partition(baskets).items()
                for _, data in basket_messages(part, encode)]

    local_baskets = LocalBaskets() if w.local_baskets else None
    learned_by_route = {route: metrics.baskets_learned.labels(route)
                        for route in ("topic", "local")}

    def learn(partition: int, baskets: list[ItemBasket], route: str, offers: list[BundleOffer],
              decisions: list[OfferDecision]) -> None:
        """Learn ``baskets`` of item-baskets ``partition`` (their anchors' changelog partition)
        and add the offers revised and the decisions logged to ``offers`` and ``decisions``.
        The decisions are taken at once, before anything is awaited: both the purchases and
        the items agent learn, and the agent that sends a decision is the one whose commit
        waits for it."""
        buffer.partition = partition
        revised, redelivered = engine.learn_baskets(baskets)
        offers += revised
        decisions += decision_outbox.take()
        learned_by_route[route].inc(len(baskets) - redelivered)
        basket_dups.inc(redelivered)

    async def route_baskets(baskets: list[ItemBasket]) -> list[Any]:
        """The purchases agent's baskets: learned here for the item-baskets partitions this
        worker may learn in place (:mod:`streamer.app.local_baskets`), their offers published;
        sent to the others' partitions. Returns the futures of every message sent."""
        if local_baskets is None:
            return await send_baskets(baskets)
        generation = app.consumer_generation_id
        futures: list[Any] = []
        offers: list[BundleOffer] = []
        decisions: list[OfferDecision] = []
        assigned: set[TP] | None = None  # read once per batch, when a partition is not armed
        for partition, part in by_partition(baskets).items():
            if local_baskets.local(partition, generation=generation):
                # What went through the topic since the barrier first, in order (the items
                # agent then finds it learned already).
                learn(partition, local_baskets.take_kept(partition) + part, "local", offers,
                      decisions)
                continue
            if assigned is None:
                assigned = app.consumer.assignment()
            for chunk, data in basket_messages(part, encode):
                barrier = (TP(baskets_name, partition) in assigned
                           and local_baskets.sending(partition, chunk, generation=generation))
                # faust types send() as an Awaitable; it returns the message's future.
                future = cast(asyncio.Future[Any],
                              await baskets_topic.send(value=data, partition=partition))
                future.add_done_callback(functools.partial(
                    _on_baskets_sent, local_baskets, partition, generation, barrier))
                futures.append(future)
        futures += await publish_offers(offers, decisions)
        return futures

    @app.agent(clicks_topic, name="clicks")
    @crashes.guard("clicks")
    async def clicks(stream: faust.StreamT[bytes]) -> None:
        consumed = metrics.events_consumed.labels(t.clicks)
        dups = metrics.duplicates.labels(t.clicks)
        async for messages in take_batches(stream, batch_max, linger_s):
            consumed.inc(len(messages))
            outcomes = []
            await rewards.wait_offers()  # attribution may close impressions: know their offers
            wall_ms = int(time.time() * 1000)
            baskets: list[ItemBasket] = []
            with buffer.holding() as hold:
                async for message, click in decoded(messages, decode_click, wall_ms):
                    buffer.partition = source = message.partition
                    # As for purchases: this very message redelivered is let through, and
                    # what it adds to its session is recognised downstream by its offset.
                    if click_dedup.first_time(click.event_id, ts_ms=click.ts,
                                              partition=source, offset=message.offset):
                        baskets += engine.session_baskets(click, partition=source,
                                                          offset=message.offset)
                    else:
                        dups.inc()
                    # Attribution has its own idempotence, kept with the state it guards.
                    closed = rewards.tracker.observe(click, partition=message.partition,
                                                     wall_ms=wall_ms)
                    if closed:  # their state waits for them (WriteBuffer.holding)
                        hold.hold()
                        outcomes += closed
                sent = await send_baskets(baskets)
                await rewards.publish_outcomes(outcomes)
            buffer.defer(*sent)  # durable before the next offset commit (WriteBuffer)

    @app.agent(purchases_topic, name="purchases")
    @crashes.guard("purchases")
    async def purchases(stream: faust.StreamT[bytes]) -> None:
        consumed = metrics.events_consumed.labels(t.purchases)
        dups = metrics.duplicates.labels(t.purchases)
        async for messages in take_batches(stream, batch_max, linger_s):
            consumed.inc(len(messages))
            outcomes = []
            await rewards.wait_offers()  # attribution may close impressions: know their offers
            wall_ms = int(time.time() * 1000)
            baskets: list[ItemBasket] = []
            with buffer.holding() as hold:
                async for message, purchase in decoded(messages, codec.decode_purchase, wall_ms):
                    buffer.partition = source = message.partition
                    # A duplicate id is dropped; this very message redelivered is fanned out
                    # again, and each anchor's record recognises its offset (engine module doc).
                    if engine.accept(purchase.event_id, purchase.ts, source, message.offset):
                        baskets += engine.fan_out(purchase, source=source,
                                                  offset=message.offset)
                    else:
                        dups.inc()
                    closed = rewards.tracker.observe(purchase, partition=message.partition,
                                                     wall_ms=wall_ms)
                    if closed:  # their state waits for them (WriteBuffer.holding)
                        hold.hold()
                        outcomes += closed
                await rewards.publish_outcomes(outcomes)
            # Learned here or sent; either way durable before the next offset commit.
            buffer.defer(*await route_baskets(baskets))

    offers_name = offers_topic.get_topic_name()
    decisions_name = rewards.decisions_topic.get_topic_name()

    async def publish_offers(offers: list[BundleOffer],
                             decisions: list[OfferDecision]) -> list[Any]:
        """Send ``offers`` keyed by anchor and their logged ``decisions`` (keyed by offer id),
        one producer batch per partition; returns the futures of their delivery. Why not
        ``offers_topic.send`` per offer: faust's send path costs ~60-80 us of CPU per message
        and the worker publishes about one offer per purchase. Partitions are the ones faust's
        send gives (the default partitioner: murmur2 of the key over the topic's partitions),
        so a storefront sees each anchor in order."""
        if not offers and not decisions:
            return []
        metrics.offers_published.inc(len(offers))
        producer: Any = app.producer._ensure_producer()  # type: ignore[attr-defined]
        parts = producer.client.cluster.partitions_for_topic(offers_name)
        if not parts:
            parts = await producer.partitions_for(offers_name)  # waits for metadata
        n = len(parts)
        records: list[ChangelogRecord] = [
            (offers_name, key_partition(o.anchor_item_id, n), o.anchor_item_id.encode(),
             encode(o))
            for o in offers
        ]
        if decisions:
            await rewards.decisions_topic.maybe_declare()  # once: cached afterwards
            records += [
                (decisions_name, key_partition(d.anchor, partitions), d.offer_id.encode(),
                 encode_decision(d))
                for d in decisions
            ]
        return await sender.send(records)

    @app.agent(baskets_topic, name="items")
    @crashes.guard("items")
    async def items(stream: faust.StreamT[bytes]) -> None:
        consumed = metrics.events_consumed.labels(baskets_name)
        async for messages in take_batches(stream, batch_max, linger_s):
            # Several messages at once: one wait for the broker per batch, not per message
            # (awaited per message, the round trip capped the agent at ~100 messages/s).
            offers: list[BundleOffer] = []
            decisions: list[OfferDecision] = []
            async for message, baskets in decoded(messages, decode_baskets):
                # Every anchor of a message is owned by the message's partition.
                consumed.inc(len(baskets))
                learn(message.partition, baskets, "topic", offers, decisions)
                if local_baskets is not None:
                    local_baskets.learned(message.partition, offset=message.offset,
                                          generation=message.generation_id)
            # Offers (and their logged decisions) leave now (latency); they and the state are
            # durable before the next offset commit (WriteBuffer).
            buffer.defer(*await publish_offers(offers, decisions))

    if price_check_s:
        @app.timer(settings.rewards.tick_interval_s)
        async def check_prices() -> None:
            if not sa.ready:  # tables not recovered yet
                return
            owned = {tp.partition for tp in app.consumer.assignment()
                     if tp.topic == baskets_name}
            metrics.offer_price_checks.inc(sweep.step(owned))

    @app.on_partitions_revoked.connect
    async def write_before_revoke(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        await cast(FastConsumer, app.consumer).write_before_revoke()

    @app.on_rebalance_complete.connect
    async def rebuild_indexes(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        # Tables were (re)covered from their changelogs: the dedup eviction indexes are
        # in-memory only and must be recreated from them.
        click_dedup.rebuild()
        engine.rebuild_indexes()
        sweep.clear()  # stale anchors found may be another worker's now
        rewards.tracker.reset()
        sa.ready = True

    @app.page("/stats/")
    async def stats(web_: Any, request: Any) -> Any:
        snapshot = metrics.snapshot()
        snapshot["tracked_items"] = len(items_t)
        # The open attribution and ledger state as the last tick counted it (every
        # ``rewards.tick_interval_s``): counting it walks every table change waiting for the
        # next commit, ~3 ms per poll at 7,000 purchases/s, 3 % of a worker polled every 100 ms.
        for name, gauge in (("reward_open_sessions", "streamer_attribution_open_sessions"),
                            ("reward_open_windows", "streamer_reward_open_windows")):
            snapshot[name] = int(cast(float, snapshot[gauge]))
        snapshot["offer_index_size"] = len(rewards.offers)
        snapshot["conversion_learned"] = engine.conversion.n_learned
        snapshot["ready"] = sa.ready
        return web_.json(snapshot)

    @app.page("/items/{item}/")
    @app.table_route(table=items_t, match_info="item")
    async def item_view(web_: Any, request: Any, item: str) -> Any:
        """Why an item is offered what it is: its candidates and its live offer."""
        now_ms = int(time.time() * 1000)
        cfg = engine.config
        candidates = engine.stats.candidates(
            item, now_ms=now_ms, max_pairs=cfg.max_pairs, max_triples=cfg.max_triples,
            min_support=0.0)
        offer = engine.live_offer(item)
        return web_.json({
            "item": item,
            "count": engine.stats.item_count(item, now_ms),
            "candidates": [
                {"items": list(c.items), "support": c.support, "confidence": c.confidence,
                 "lift": c.lift, "score": c.score} for c in candidates
            ],
            "offer": msgspec.to_builtins(offer) if offer is not None else None,
        })

    @app.page("/dashboard/")
    async def dashboard(web_: Any, request: Any) -> Any:
        return web_.html(DASHBOARD_HTML)

    @app.page("/dashboard/data.json")
    async def dashboard_json(web_: Any, request: Any) -> Any:
        update_lag(app, metrics)
        try:
            data = dashboard_data(rewards.board, rewards.offers, metrics.snapshot(),
                                  window=request.query.get("window"))
        except ValueError as e:
            return web_.json({"error": str(e)}, status=400)
        return web_.json(data)

    @app.page("/metrics")
    async def prometheus(web_: Any, request: Any) -> Any:
        metrics.tracked_items.set(len(items_t))
        update_lag(app, metrics)
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return sa
