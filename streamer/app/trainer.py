"""``streamer trainer``: the process that fine-tunes the torch policy from ``feedback`` and
publishes promoted versions to ``policy-updates``.

Its own process, never a worker's event loop. Two parts:

- :class:`FeedbackTrainer`, no Kafka: decodes feedback records (the workers' nested
  ``FeedbackRecord`` or a flat one: :func:`feedback_fields`) against the offers they were
  impressions of (:func:`streamer.engine.logged_decision`: the decision a record carries, as
  the worker's policy scored it when it made the offer; rebuilt from the offer, and counted,
  only for records without one), feeds the River conversion model,
  the drift monitor and :class:`~streamer.policy.PolicyTrainer`'s bounded buffer, and applies
  the promotion gate (against the rewards the live version, v0 or torch, logged).
- :func:`run_trainer`: one aiokafka consumer without a group reading every partition of
  ``offers`` (to index offers by id), ``purchases`` (list prices, as the engine's catalogue),
  ``feedback`` and ``policy-updates`` (which version is live) from the beginning. A restarted
  trainer rebuilds its buffer from what the topics retain instead of resuming from committed
  offsets: the buffer is the state, and it is cheaper to re-read than to checkpoint.
  Fine-tunes run in a worker thread (torch releases the GIL in its kernels) so consuming goes
  on meanwhile; one at a time. A finished one whose live version was replaced meanwhile (an
  operator's rollback) is discarded, never published (:func:`stale_result`). Asked to stop
  (SIGTERM), it asks the running fine-tune to stop too (a ``threading.Event`` the fine-tune
  checks between mini-batches and evaluation chunks), which ends within a step, publishing
  nothing: the process exits in about a second, not after the rest of the fine-tune.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamer.app.kafka import aiokafka_kwargs, start_client, topic_partitions
from streamer.engine import Engine, EngineConfig, carries_decision, logged_decision
from streamer.events import (
    BundleOffer,
    EventCodec,
    InvalidEvent,
    PurchaseEvent,
    check_offer,
    typed_decoder,
)
from streamer.events.dedup import Deduplicator
from streamer.observability import Metrics, TrainerMetrics
from streamer.online import FEATURE_NAMES, ConversionModel, DriftMonitor
from streamer.policy import (
    FeedbackBatch,
    FineTuneAbandoned,
    FineTuneConfig,
    FineTuneResult,
    PolicyTrainer,
    PolicyVersions,
    TorchPolicy,
    UnsafeCheckpointError,
    fine_tune,
    gate_against_logged,
)
from streamer.policy.feedback import MissingFeaturesError
from streamer.policy.torch_policy import DEFAULT_DISCOUNT_LEVELS
from streamer.policy.training import TOO_FEW_LIVE, too_few_live
from streamer.rewards import REWARD_ATTRIBUTIONS, RewardAttribution
from streamer.settings import Settings, TrainerSettings

log = logging.getLogger(__name__)

#: Feedback records waiting for their offer, at most (the oldest are dropped beyond).
MAX_PENDING = 10_000
#: How long (event time) the trainer remembers an impression id it has buffered; a worker
#: republishes an outcome within seconds of its restart, so a day is ample.
FEEDBACK_DEDUP_TTL_MS = 24 * 3_600_000
POLICY_KEY = b"policy"


def feedback_fields(body: Mapping[str, Any], mode: RewardAttribution) -> dict[str, Any]:
    """One feedback record as :func:`streamer.engine.logged_decision` reads it: flat, with
    ``reward`` and ``converted`` the ones the policy learns under ``mode``.

    A worker's record (``FeedbackRecord``) nests the impression's outcome under ``outcome``;
    its fields are lifted to the top (a flat record, as tests and replays write, is taken as
    it is). With ``mode="offer"`` the reward is ``direct_reward`` (purchases through the offer)
    and ``converted`` means ``attribution == "offer"``; a record without ``attribution`` (written
    before the field existed) keeps its ``reward``, since it cannot tell how it was earned.

    >>> nested = {"schema_version": 1, "candidates": [], "outcome": {"offer_id": "o",
    ...     "variant": 0, "propensity": 0.5, "reward": 30.0, "converted": True,
    ...     "attribution": "basket", "direct_reward": 0.0}}
    >>> f = feedback_fields(nested, "offer")
    >>> f["offer_id"], f["reward"], f["converted"], f["logged_reward"]
    ('o', 0.0, False, 30.0)
    >>> feedback_fields(nested, "any")["reward"]
    30.0
    """
    if mode not in REWARD_ATTRIBUTIONS:
        raise ValueError(f"reward attribution must be one of {REWARD_ATTRIBUTIONS}, got {mode!r}")
    outcome = body.get("outcome")
    flat = dict(body)
    if isinstance(outcome, Mapping):
        del flat["outcome"]
        flat.update(outcome)
    flat["logged_reward"] = flat.get("reward")
    if mode == "offer" and "attribution" in flat:
        flat["reward"] = flat.get("direct_reward", 0.0)
        flat["converted"] = flat["attribution"] == "offer"
    return flat


@dataclass(frozen=True, slots=True)
class FineTuneJob:
    """What a fine-tune runs on, taken on the consumer's thread (the buffer is not
    thread-safe): a snapshot, the policy to start from and the version it is judged against."""

    start: TorchPolicy
    live_version: str
    live_is_torch: bool
    batch: FeedbackBatch
    records_at_start: int
    reason: str


class FeedbackTrainer:
    """The trainer's logic without Kafka. Not thread-safe: call it from one thread, except
    :meth:`run` (pure, for an executor).

    ``max_variants``: the workers' ceiling on shown variants (``offers.max_variants``), on its
    fresh policy and on every version it reads (``PolicyVersions``); None: as each checkpoint
    says, and the fresh policy's default."""

    def __init__(self, config: TrainerSettings, *, base_version: str,
                 segments: tuple[str, ...] = (),
                 reward_attribution: RewardAttribution = "offer",
                 max_variants: int | None = None,
                 metrics: TrainerMetrics | None = None,
                 v0_discount_pct: float | None = None) -> None:
        self.settings = config
        self.metrics = metrics or TrainerMetrics()
        #: Records buffered by where their decision came from: ``logged`` (carried by the
        #: record, as the policy scored it) or ``rebuilt`` (from the offer, with this
        #: trainer's prices and conversion model: records of older workers, or whose decision
        #: the worker no longer had).
        self.decision_sources = {"logged": 0, "rebuilt": 0}
        #: What the policy learns from (``policy.reward_attribution``): see feedback_fields.
        self.reward_attribution = reward_attribution
        #: The workers' configured segments (``offers.segments``): their feature slots.
        self.segments = segments
        self.fine_tune_config = FineTuneConfig(
            objective=config.objective,
            epochs=config.epochs,
            min_steps=config.min_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            holdout_fraction=config.holdout_fraction,
            confidence=config.gate_confidence,
            unsupported_reward=config.unsupported_reward,
            exploration_allowance=config.exploration_allowance,
            device=config.device,
            max_threads=config.max_threads,
            seed=config.seed,
        )
        self.trainer = PolicyTrainer(
            FEATURE_NAMES,
            capacity=config.buffer_records,
            max_actions=config.max_actions,
            every_records=config.every_records,
            every_seconds=config.every_s,
            min_records=config.min_records,
            config=self.fine_tune_config,
            start_s=time.monotonic(),
        )
        # The workers' ceiling (offers.max_variants), on the policies the trainer creates and
        # on the live ones it fine-tunes and judges: what it evaluates is what they show.
        # The discount's level one-hot: without it the first candidate kept most of its
        # probability on discounts v0 never showed (VariantScorer's one_hot).
        # v0's discount among its levels when off them (``v0_discount_pct``): the only rows v0
        # tries, which a policy without that level never serves (served_rows), so nothing
        # could ever be promoted.
        levels = tuple(sorted({*DEFAULT_DISCOUNT_LEVELS,
                               *(() if v0_discount_pct is None else (v0_discount_pct,))}))
        self.initial = TorchPolicy.initial(FEATURE_NAMES, seed=config.seed, discount_levels=levels,
                                           discount_one_hot=True).capped(max_variants)
        self.versions = PolicyVersions(base_version=base_version, max_variants=max_variants)
        self.conversion = ConversionModel()
        self.drift = DriftMonitor()
        self.catalog: dict[str, float] = {}
        self.offers: OrderedDict[str, BundleOffer] = OrderedDict()
        self.pending: OrderedDict[str, list[Mapping[str, Any]]] = OrderedDict()
        self.n_pending = 0
        self.buffered = 0
        self.invalid = 0
        # A worker that crashes while it publishes outcomes publishes them again after its
        # restart (outcomes reach the broker before the state that closed them, so a crash
        # repeats an outcome rather than losing it): count each impression once.
        self.seen = Deduplicator({}, ttl_ms=FEEDBACK_DEDUP_TTL_MS,
                                 capacity=max(config.buffer_records, MAX_PENDING))
        self.duplicates = 0

    # -- inputs ---------------------------------------------------------------------------
    def observe_offer(self, offer: BundleOffer) -> int:
        """Index ``offer`` by id; returns how many waiting feedback records it let in."""
        self.offers[offer.offer_id] = offer
        while len(self.offers) > self.settings.offer_index_size:
            self.offers.popitem(last=False)
        waiting = self.pending.pop(offer.offer_id, [])
        self.n_pending -= len(waiting)
        return sum(self.observe_feedback(r) for r in waiting)

    def observe_purchase(self, purchase: PurchaseEvent) -> None:
        """List prices, as the engine's catalogue learns them (not from offer purchases)."""
        if purchase.offer_id is None:
            for line in purchase.items:
                self.catalog[line.item_id] = line.unit_price

    def observe_feedback(self, body: Mapping[str, Any]) -> bool:
        """Buffer one feedback record (nested or flat: :func:`feedback_fields`, which also
        picks the reward learned from); True when it was. The record's logged decision is
        taken as it is; one without (older workers, evicted decisions) is rebuilt from the
        offer and counted (:attr:`decision_sources`). A record that needs its offer (to be
        rebuilt) and whose offer is unknown waits for it (bounded); one that carries its
        decision needs no offer; a malformed one is counted and dropped; a record of an
        impression already buffered (a worker's republication after a crash) is counted in
        :attr:`duplicates` and dropped."""
        record = feedback_fields(body, self.reward_attribution)
        offer = self._offer_of(record)
        logged = carries_decision(record)
        if offer is None and not logged:
            offer_id = str(record.get("offer_id", ""))
            self.pending.setdefault(offer_id, []).append(body)
            self.n_pending += 1
            while self.n_pending > MAX_PENDING:
                _, dropped = self.pending.popitem(last=False)
                self.n_pending -= len(dropped)
            return False
        impression = record.get("impression_id")
        if isinstance(impression, str) and not self.seen.first_time(
            impression, ts_ms=_int_or_zero(record.get("ts"))
        ):
            self.duplicates += 1
            return False
        source = "logged" if logged else "rebuilt"
        logged_by = (record.get("policy_version")
                     or (offer.policy_version if offer is not None
                         else _decision_field(record, "policy_version")))
        try:
            decision = logged_decision(record, offer, prices=self.catalog,
                                       conversion=self.conversion, segments=self.segments)
            self.trainer.add(dataclasses.replace(
                decision, policy_version=str(logged_by) if logged_by else None))
        except ValueError as e:
            self.invalid += 1
            log.warning("feedback record of offer %s dropped: %s", record.get("offer_id"), e)
            return False
        self.decision_sources[source] += 1
        self.metrics.feedback_decisions.labels("trainer", source).inc()
        # Learn after deciding: the record's features use the model as it was before it.
        converted = bool(record.get("converted", decision.reward > 0))
        clicked = record.get("clicked")
        self.conversion.learn_one(decision.variant_features[decision.chosen], converted,
                                  None if clicked is None else bool(clicked))
        version = str(logged_by)
        if self.drift.observe_reward(version, decision.reward):
            # As the workers' models do on the same stream (Engine.learn_conversion).
            self.conversion.forget_bundles()
            self.metrics.reward_drifts.labels("trainer", version).inc()
            self.trainer.request_fine_tune(f"reward drift under {version}")
        self.buffered += 1
        return True

    def _offer_of(self, record: Mapping[str, Any]) -> BundleOffer | None:
        """The record's offer: embedded, else indexed from ``offers`` (None: not seen)."""
        embedded = record.get("offer")
        if isinstance(embedded, Mapping):
            # Converted as it is, not encoded again to decode: json.dumps of a value nested
            # just below the limit the record was decoded with raised RecursionError.
            try:
                offer = msgspec.convert(embedded, BundleOffer)
                check_offer(offer)
            except (msgspec.ValidationError, InvalidEvent):
                return None
            return offer
        return self.offers.get(str(record.get("offer_id", "")))

    def observe_policy_update(self, data: bytes) -> str | None:
        """Follow ``policy-updates``; returns the live version after it, None if refused."""
        try:
            return self.versions.apply(data).version
        except ValueError as e:
            log.warning("policy update refused: %s", e)
            return None

    # -- fine-tunes -----------------------------------------------------------------------
    def next_job(self, now_s: float) -> FineTuneJob | None:
        """A fine-tune to run now, or None when none is due, or when this round is skipped:
        the live version reads features the buffer does not hold (a version published by a
        trainer of another release, during a rolling upgrade: nothing can train or judge
        it), or the holdout would hold too few records the live version logged to judge a
        candidate against (:func:`~streamer.policy.training.too_few_live`: for a while after
        each promotion or rollback). A skipped round is logged once, counted
        (``streamer_trainer_skips{reason="features"|"too_few_live"}``) and kept in the
        history, and the next waits for the next trigger. The buffer's columns are taken in
        the live version's order: one that reads the same features in another order, or
        fewer of them, is fine-tuned on its own columns."""
        reason = self.trainer.due(now_s)
        if reason is None:
            return None
        live = self.versions.live_policy
        start = live or self.initial
        buffer = self.trainer.buffer
        try:
            buffer.require(start.shape.feature_names)
        except MissingFeaturesError as e:
            self._skip_round(now_s, f"live version {self.versions.live_version} reads "
                             f"features the feedback buffer does not hold "
                             f"({', '.join(e.missing[:10])}); a trainer of the release that "
                             "published it can fine-tune it", "features")
            return None
        # Before the snapshot and the training, not after: a candidate its holdout cannot
        # judge would be turned down unjudged (gate_against_logged), the buffer's copy and the
        # fine-tune's CPU spent for nothing.
        why = too_few_live(buffer.logged_by(), self.fine_tune_config,
                           live_version=self.versions.live_version, min_live=self.min_live)
        if why is not None:
            self._skip_round(now_s, why, "too_few_live", level=logging.INFO)
            return None
        batch = buffer.snapshot(start.shape.feature_names)
        return FineTuneJob(
            start=start,
            live_version=self.versions.live_version,
            live_is_torch=live is not None,
            batch=batch,
            records_at_start=self.trainer.buffer.total_added,
            reason=reason,
        )

    def _skip_round(self, now_s: float, why: str, label: str,
                    level: int = logging.WARNING) -> None:
        reason = f"skipped: {why}"
        self.trainer.skip(now_s, live_version=self.versions.live_version, reason=reason)
        self.metrics.trainer_skips.labels(label).inc()
        log.log(level, "fine-tune round %s", reason)

    @property
    def min_live(self) -> int:
        """The fewest records of the live version a holdout must hold to judge a candidate:
        as many as a holdout of ``min_records`` would be."""
        return max(2, round(self.settings.min_records * self.fine_tune_config.holdout_fraction))

    def run(self, job: FineTuneJob, stop: threading.Event | None = None) -> FineTuneResult:
        """Fine-tune and gate (blocks for seconds: call it in an executor). The candidate is
        judged against the rewards the live version actually logged, v0 or torch: on the
        holdout's records of the live version only (after a promotion or a rollback the
        newest are partly another version's), and rejected while they are fewer than a
        holdout of ``min_records`` would be (:func:`gate_against_logged`). Raises
        ``FineTuneAbandoned`` soon after ``stop`` is set (the trainer is shutting down)."""
        result = fine_tune(job.start, job.batch, self.fine_tune_config, stop=stop)
        return gate_against_logged(result, job.batch, self.fine_tune_config,
                                   live_version=job.live_version, min_live=self.min_live,
                                   stop=stop)

    def finish(self, job: FineTuneJob, result: FineTuneResult, now_s: float) -> FineTuneResult:
        """Reset the triggers and remember the outcome (call on the consumer's thread); returns
        it, turned down when it is stale (:func:`stale_result`): the history then says it was
        not published, and why."""
        if stale_result(self, result):
            result = dataclasses.replace(
                result, promoted=False,
                reason=f"stale: judged against {result.live_version}, but "
                       f"{self.versions.live_version} went live while it trained")
        self.trainer.record(result, now_s, records_at_start=job.records_at_start)
        return result


def _int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def rejection_label(result: FineTuneResult) -> str:
    """A bounded label for the rejections counter."""
    if "non-finite" in result.reason:
        return "non_finite"
    return "too_few_live" if TOO_FEW_LIVE in result.reason else "gate"


async def _assign_all(consumer: AIOKafkaConsumer, topics: list[str]) -> None:
    partitions: list[TopicPartition] = []
    for topic in topics:
        partitions += await topic_partitions(consumer, topic)
    consumer.assign(partitions)
    await consumer.seek_to_beginning()


def trainer_core(settings: Settings, metrics: TrainerMetrics | None = None) -> FeedbackTrainer:
    """The trainer's core as ``settings`` configure it, with the workers' own settings where
    they must agree: their segments (feature slots), the reward they learn from, the most
    variants an offer shows (``offers.max_variants``), so it evaluates what they serve, and
    v0's discount (``offers.discount_pct``), among the levels its fresh policy can serve."""
    return FeedbackTrainer(settings.trainer,
                           base_version=Engine.v0_policy(EngineConfig()).version,
                           segments=settings.offers.segment_names,
                           reward_attribution=settings.policy.reward_attribution,
                           max_variants=settings.offers.max_variants, metrics=metrics,
                           v0_discount_pct=settings.offers.discount_pct)


async def run_trainer(
    settings: Settings, *, stop: asyncio.Event | None = None,
    metrics: TrainerMetrics | None = None,
) -> FeedbackTrainer:
    """Consume, fine-tune, publish until ``stop`` is set (or forever); returns the core."""
    t = settings.topics
    metrics = metrics or TrainerMetrics()
    stop = stop or asyncio.Event()
    core = trainer_core(settings, metrics)
    codec = EventCodec(settings.kafka.max_message_bytes)
    kw = aiokafka_kwargs(settings.kafka)
    consumer = AIOKafkaConsumer(**kw, enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(**kw)
    await start_client(consumer)
    try:
        await start_client(producer)
    except BaseException:
        await consumer.stop()  # started: stopped here, not left to the process's exit
        raise
    # One thread: fine-tunes are CPU-bound for seconds and must not stall consuming.
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fine-tune")
    # Set on the way out: the running fine-tune polls it (a thread cannot be cancelled).
    abandon = threading.Event()
    loop = asyncio.get_running_loop()
    job: FineTuneJob | None = None
    running: asyncio.Future[FineTuneResult] | None = None
    try:
        await _assign_all(consumer, [t.policy_updates, t.offers, t.purchases, t.feedback])
        log.info("trainer consuming %s, %s, %s, %s", t.feedback, t.offers, t.purchases,
                 t.policy_updates)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for r in records:
                    _dispatch(core, codec, tp.topic, r, settings, metrics)
            if running is None:
                job = core.next_job(time.monotonic())
                if job is not None:
                    log.info("fine-tune of %s on %d records (%s)", job.start.version,
                             len(job.batch), job.reason)
                    running = loop.run_in_executor(executor, core.run, job, abandon)
            elif running.done() and await _read_to_end(consumer, t.policy_updates):
                assert job is not None
                result = running.result()
                running = None
                result = core.finish(job, result, time.monotonic())
                await _publish(core, producer, t.policy_updates, result, metrics)
    finally:
        abandon.set()
        if running is not None and job is not None:
            await _abandon(running, job, metrics)
        executor.shutdown(wait=True)
        await consumer.stop()
        await producer.stop()
    return core


async def _abandon(running: asyncio.Future[FineTuneResult], job: FineTuneJob,
                   metrics: TrainerMetrics) -> None:
    """Wait for the fine-tune ``running``, asked to stop, to end. One that ends abandoned is
    logged and counted (``streamer_trainer_skips{reason="shutdown"}``); a result it finished
    before the request is dropped unpublished, and an error it ended with is not raised (the
    trainer is stopping, perhaps for that very error): both are logged."""
    try:
        result = await running
    except FineTuneAbandoned:
        metrics.trainer_skips.labels("shutdown").inc()
        log.info("fine-tune abandoned: shutting down (%s on %d records)",
                 job.start.version, len(job.batch))
    except Exception:
        log.warning("fine-tune of %s ended with an error as the trainer stopped",
                    job.start.version, exc_info=True)
    else:
        verdict = "the gate passed it" if result.promoted else "the gate rejected it"
        log.info("fine-tune of %s finished as the trainer stopped: not published (%s)",
                 job.start.version, verdict)


def _dispatch(core: FeedbackTrainer, codec: EventCodec, topic: str, record: Any,
              settings: Settings, metrics: Metrics) -> None:
    t = settings.topics
    value = bytes(record.value or b"")
    try:
        if topic == t.policy_updates:
            core.observe_policy_update(value)
        elif topic == t.offers:
            core.observe_offer(codec.decode_coherent_offer(value))
        elif topic == t.purchases:
            core.observe_purchase(codec.decode_purchase(value))
        elif topic == t.feedback:
            core.observe_feedback(_feedback_decoder(codec.max_message_bytes)(value))
        metrics.events_consumed.labels(topic).inc()
    except (InvalidEvent, ValueError) as e:
        core.invalid += 1
        log.warning("skipped %s[%d]@%d: %s", topic, record.partition, record.offset, e)


@functools.cache
def _feedback_decoder(max_message_bytes: int) -> Callable[[bytes], dict[str, Any]]:
    """Feedback records as JSON objects, through the codec's checks (size first; invalid
    UTF-8, nesting too deep for the interpreter and numbers out of range, such as ``1e999``,
    are ``InvalidEvent``): the fields :func:`feedback_fields` and
    :func:`streamer.engine.logged_decision` read are typed there, since both formats (the
    workers' nested one and flat ones) go through them."""
    return typed_decoder(dict[str, Any], max_message_bytes)


async def _read_to_end(consumer: AIOKafkaConsumer, topic: str) -> bool:
    """True once the consumer has dispatched every record ``topic`` held when asked.

    Why: a finished fine-tune is published only if the version it was judged against is
    still live (:func:`_publish`); a rollback an operator published a moment ago must have
    been read for that check to see it, and the consumer may still be busy with a backlog of
    feedback. The window between this check and the send stays (Kafka has no conditional
    write); it is a round trip instead of a fine-tune's length.
    """
    partitions = [tp for tp in consumer.assignment() if tp.topic == topic]
    ends = await consumer.end_offsets(partitions)
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


def stale_result(core: FeedbackTrainer, result: FineTuneResult) -> bool:
    """True when the version ``result`` was started from and judged against is no longer
    live (an operator's rollback, or another publisher, while it trained): publishing it
    would undo that change, and its figures compare it with a version nobody serves."""
    return result.live_version != core.versions.live_version


async def _publish(core: FeedbackTrainer, producer: AIOKafkaProducer, topic: str,
                   result: FineTuneResult, metrics: TrainerMetrics) -> None:
    figures = json.dumps(result.metadata(), sort_keys=True)
    if stale_result(core, result):
        metrics.trainer_rejections.labels("stale").inc()
        log.warning("candidate %s discarded: it was judged against %s, but %s went live while "
                    "it trained: %s", result.candidate.version, result.live_version,
                    core.versions.live_version, figures)
        return
    if result.difference is not None and math.isfinite(result.difference.lower):
        metrics.trainer_gate_margin.set(result.difference.lower)
    metrics.trainer_unsupported_mass.set(result.candidate_evaluation.unsupported_mass)
    if not result.promoted:
        metrics.trainer_rejections.labels(rejection_label(result)).inc()
        log.info("candidate %s rejected: %s", result.candidate.version, figures)
        return
    try:
        data = result.checkpoint()
    except UnsafeCheckpointError as e:  # the gate refuses these first; never publish one
        metrics.trainer_rejections.labels("non_finite").inc()
        log.warning("candidate %s not published: %s", result.candidate.version, e)
        return
    await producer.send_and_wait(topic, data, key=POLICY_KEY)
    core.observe_policy_update(data)  # live for the next fine-tune, before reading it back
    metrics.trainer_promotions.inc()
    log.info("promoted %s: %s", result.candidate.version, figures)


def main(settings: Settings) -> None:
    """Block running the trainer until SIGINT/SIGTERM."""
    import signal

    from prometheus_client import start_http_server

    from streamer.app.worker import ensure_topics
    from streamer.observability import configure_logging

    configure_logging(settings.worker.log_level)
    metrics = TrainerMetrics()
    if settings.trainer.metrics_port:
        start_http_server(settings.trainer.metrics_port, addr=settings.trainer.metrics_host,
                          registry=metrics.registry)

    async def _main() -> None:
        await ensure_topics(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_trainer(settings, stop=stop, metrics=metrics)

    asyncio.run(_main())


def _decision_field(record: Mapping[str, Any], name: str) -> Any:
    """A field of the decision ``record`` carries (an ``OfferDecision`` or its JSON)."""
    decision = record.get("decision")
    if isinstance(decision, Mapping):
        return decision.get(name)
    return getattr(decision, name, None)
