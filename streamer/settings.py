"""One settings tree, built once at start-up and passed down.

Every field can be set from the environment as ``STREAMER__SECTION__FIELD`` (for example
``STREAMER__KAFKA__BOOTSTRAP_SERVERS=kafka:9092``) or from a ``.env`` file. Domain classes never
see this object: the composition root (``streamer.app``) hands them plain values.

A ``STREAMER__`` variable that names no setting is an error, wherever it comes from: a typo
silently ignored runs a worker on a default nobody chose. Variables without the prefix are
other tools' business (a ``.env`` is often shared with docker compose) and are ignored.

>>> s = Settings(kafka={"bootstrap_servers": "127.0.0.1:9092"})
>>> s.kafka.bootstrap_servers, s.topics.offers
('127.0.0.1:9092', 'offers')
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """How to reach Kafka. Security settings pass through to faust and aiokafka unchanged."""

    # An error about this section (its security settings are checked together) would otherwise
    # show the section's input, the SASL password included.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol. The SASL_* settings are for "
        "SASL_PLAINTEXT and SASL_SSL only, the SSL_* ones for SSL and SASL_SSL only: set with "
        "another protocol, they are refused at start-up, not ignored."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_* (PLAIN when unset)."
    )
    sasl_username: str | None = Field(
        None, description="SASL user name (required when the protocol is SASL_*)."
    )
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (required when the protocol is SASL_*; never logged)."
    )
    ssl_cafile: str | None = Field(None, description="CA bundle to verify the brokers (TLS).")
    ssl_certfile: str | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: str | None = Field(
        None, description="Client private key (mutual TLS), with SSL_CERTFILE."
    )
    session_timeout_s: float = Field(
        6.0, gt=0, description="Consumer group session timeout; low values join groups fast and "
        "hand a dead worker's partitions on sooner, but a worker cut off from the broker for "
        "longer is dropped by the group and restarts (Apache Kafka's default: 45 s)."
    )
    rebalance_timeout_s: float = Field(
        6.0, gt=0, description="Consumer group rebalance timeout; a worker whose batch holds it "
        "past this during a rebalance is dropped by the group and restarts."
    )
    heartbeat_interval_s: float = Field(1.0, gt=0, description="Consumer heartbeat interval.")
    fetch_max_wait_ms: int = Field(
        500, ge=1, le=10_000,
        description="Longest the broker holds a fetch while no data comes (Kafka's default; "
        "faust's 1,500 ms). Against the embedded broker, which holds it the whole time, 20 ms "
        "unless set.",
    )
    max_message_bytes: int = Field(
        256 * 1024, gt=0, description="Messages larger than this are dead-lettered undecoded."
    )
    producer_batch_bytes: int = Field(
        512 * 1024, ge=16 * 1024, description="Largest record batch the worker's producer "
        "builds per partition (faust's own: 16 KiB). Keep it below the brokers' "
        "message.max.bytes (Kafka's default: 1 MiB)."
    )

    @model_validator(mode="after")
    def _security_settings_apply(self) -> KafkaSettings:
        """Refuse TLS or SASL settings the protocol would ignore, and SASL without its
        credentials. Why: the clients only read what the protocol uses, so ``SSL_CAFILE`` with
        ``SASL_PLAINTEXT`` sent the SASL password in cleartext while TLS looked configured
        (and a missing CA file was no error), and SASL credentials with ``SSL`` were dropped;
        SASL without a user name reached faust as ``''``."""
        protocol = self.security_protocol
        tls, sasl = protocol in ("SSL", "SASL_SSL"), protocol.startswith("SASL")
        ignored_tls = [] if tls else _given(self, _TLS_FIELDS)
        if ignored_tls:
            raise ValueError(
                f"{_variables(ignored_tls)} set, but STREAMER__KAFKA__SECURITY_PROTOCOL="
                f"{protocol} uses no TLS: they would be ignored"
                + (" and the SASL password sent in cleartext" if sasl else "")
                + f". Set STREAMER__KAFKA__SECURITY_PROTOCOL={'SASL_SSL' if sasl else 'SSL'} "
                "to use them, or unset them")
        ignored_sasl = [] if sasl else _given(self, _SASL_FIELDS)
        if ignored_sasl:
            raise ValueError(
                f"{_variables(ignored_sasl)} set, but STREAMER__KAFKA__SECURITY_PROTOCOL="
                f"{protocol} uses no SASL: they would be ignored. Set "
                f"STREAMER__KAFKA__SECURITY_PROTOCOL={'SASL_SSL' if tls else 'SASL_PLAINTEXT'} "
                "to use them, or unset them")
        missing = [f for f in ("sasl_username", "sasl_password")
                   if sasl and f not in _given(self, _SASL_FIELDS)]
        if missing:
            them = "it" if len(missing) == 1 else "them"
            raise ValueError(f"STREAMER__KAFKA__SECURITY_PROTOCOL={protocol} needs "
                             f"{_variables(missing)}: set {them}, or choose a protocol "
                             "without SASL")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("STREAMER__KAFKA__SSL_KEYFILE set without STREAMER__KAFKA__SSL_"
                             "CERTFILE: it would be ignored; set the client certificate it "
                             "belongs to, or unset it")
        return self


_TLS_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
_SASL_FIELDS = ("sasl_mechanism", "sasl_username", "sasl_password")


def _given(section: BaseModel, fields: tuple[str, ...]) -> list[str]:
    """The ``fields`` set to something (an empty value counts as unset, as the clients read
    it: an empty ``SSL_CAFILE`` loads no CA file)."""
    return [f for f in fields if getattr(section, f)]


def _variables(fields: list[str]) -> str:
    """``fields`` of the kafka section as the environment variables that set them."""
    return ", ".join(f"STREAMER__KAFKA__{f.upper()}" for f in fields)


class TopicSettings(_Section):
    """Topic names and partition counts (see design.md section 2)."""

    clicks: str = Field("clicks", description="Storefront interactions (ClickEvent).")
    purchases: str = Field("purchases", description="Completed orders (PurchaseEvent).")
    offers: str = Field("offers", description="Published offers (BundleOffer), keyed by anchor.")
    feedback: str = Field("feedback", description="Impressions joined with outcomes.")
    rewards: str = Field("rewards", description="Windowed reward aggregates (RewardWindow).")
    policy_updates: str = Field("policy-updates", description="Promoted policy versions.")
    dead_letters: str = Field("dead-letters", description="Messages that failed validation.")
    partitions: int = Field(
        4, ge=1, description="Partitions of the topics streamer creates. Existing clicks and "
        "purchases must have as many: a worker refuses to start otherwise.")
    replication_factor: int = Field(1, ge=1, description="Replication of created topics.")


class WorkerSettings(_Section):
    """The faust worker."""

    app_id: str = Field("streamer", description="Faust app id: consumer group and table prefix.")
    data_dir: str = Field(
        "/tmp/streamer-data", description="Where faust keeps local table state."
    )
    web_host: str = Field("127.0.0.1", description="Web server bind address (localhost only).")
    web_port: int = Field(6066, ge=0, le=65535, description="Web server port (0: any free).")
    commit_interval_s: float = Field(
        1.0, gt=0,
        description="Offset commit interval; table changes reach their changelogs at each commit. "
        "Longer: a hot key is written back less often, but each commit holds the event loop "
        "longer and a crash redelivers more events (3 s against 1 s: 4-7 % less CPU per "
        "purchase over throughput.py's 100,000, and p99 at 2,000 purchases/s 102-120 against "
        "85-90 ms in latency.py).",
    )
    dedup_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="How long an event_id is remembered for de-duplication."
    )
    max_event_ahead_s: float = Field(
        3600.0, gt=0,
        description="Clicks and purchases stamped more than this many seconds after the "
        "worker's clock are dead-lettered (kind semantic): event time only moves forward, and "
        "one event from a host with a wrong clock would otherwise move it ahead for good "
        "(co-purchase decay, attribution windows). One hour, as Apache Kafka's "
        "message.timestamp.after.max.ms.",
    )
    dedup_capacity: int = Field(
        1_000_000, gt=0, description="At most this many event ids remembered per partition."
    )
    decision_log_capacity: int = Field(
        100_000, gt=0, description="At most this many logged offer decisions kept in memory "
        "(every worker keeps every partition's; soonest to expire dropped first, their "
        "feedback then rebuilt). About 3 KB each in memory (held as read from the topic, "
        "MessagePack; ~12 rows: up to 4 candidates x 4 discounts), so 100,000 is ~300 MB "
        "at most.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the worker."
    )
    batch_max: int = Field(
        4096, ge=1, le=100_000,
        description="Most events an agent takes at once. Batches fill only under a backlog "
        "(live, an agent takes what came within batch_linger_ms); an anchor touched several "
        "times in one batch has its offer reconsidered once, at its last touch. The "
        "agents' stream buffers hold at least this many events.",
    )
    batch_linger_ms: float = Field(
        5.0, gt=0, le=10_000,
        description="Longest a batch waits to fill, from its first event (latency added "
        "per agent).",
    )
    standby_replicas: int = Field(
        0, ge=0, le=8,
        description="Standby copies of each table partition kept warm on other workers: "
        "faster failover, but each worker then replays the others' changelogs (with 2 "
        "workers and 1 standby, twice the CPU per event). 0, as Kafka Streams defaults to; "
        "faust's default is 1.",
    )
    local_baskets: bool = Field(
        True,
        description="Learn the item baskets of a purchase in place when this worker also "
        "owns their anchors' item-baskets partition (once nothing older can still arrive "
        "through it), instead of through the repartition topic: one hop less. False: "
        "every basket goes through the topic.",
    )
    table_cache_size: int = Field(
        4096, ge=0,
        description="Decoded values each table keeps (the last written or read), so a hot "
        "key is not decoded from its stored bytes on every read; 0: none. A decoded anchor "
        "record takes ~6 KB with 50 partners and ~90 KB with 1,024 (top_k), so 4,096 of them "
        "25-360 MB; a decoded offer ~1.7 KB, a count or a price under 0.1 KB. On the throughput "
        "benchmark (~4,600 items) 4,096 executes 2.7 % fewer instructions per purchase than "
        "1,024.",
    )
    gc_young_threshold: int = Field(
        500_000, ge=0,
        description="Python's youngest garbage-collector generation is collected after this "
        "many more container objects were allocated than freed (0: Python's default, 700). "
        "A worker's young objects are mostly alive when collected (a batch in flight, a "
        "second of table changes waiting for the write-back) and its cyclic garbage is rare, "
        "so each collection walks tens of thousands of live objects and finds almost nothing: "
        "at 700 that was ~10 % of the worker's time at a stream's start; at 50,000, 12-50 ms "
        "per young collection and ~9 % of its CPU in steady state; at 500,000 about one "
        "collection per 100,000 purchases, pauses up to ~0.25 s. Cyclic garbage waits longer.",
    )


class CoPurchaseSettings(_Section):
    """The co-purchase statistics behind candidate bundles."""

    half_life_days: float = Field(
        45.0, gt=0, description="Event-time half-life of co-purchase counts, in days."
    )
    top_k: int = Field(
        1024,
        ge=8,
        le=8192,
        description="Partners tracked per item (heavy hitters); big baskets need hundreds.",
    )
    max_partner_entries: int | None = Field(
        None,
        ge=1,
        description="Budget of partner entries over all the items a worker holds: each "
        "item's table then holds at most budget // items (at least 8, at most top_k). "
        "Unset: top_k each.",
    )
    max_triples: int = Field(1, ge=0, le=4, description="3-item variants per offer.")
    triple_partners: int = Field(
        8,
        ge=0,
        le=16,
        description="An order's strongest partners of an item that form its triples "
        "(C(n, 2) triple updates per item and order; 0: no triples).",
    )
    top_k_triples: int = Field(
        256, ge=2, le=4096, description="Triples tracked per item (heavy hitters)."
    )
    co_view_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Weight of the items one session viewed (view, click) as a pseudo-order, "
        "against 1 for a purchase; 0 leaves co-views out.",
    )
    co_cart_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Weight of the items one session carted (add_to_cart) as a pseudo-order, "
        "against 1 for a purchase; 0 leaves co-carts out.",
    )
    offer_purchase_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Weight of an order bought through an offer (it carries the offer_id), "
        "against 1 for any other order; 0 leaves them out, so the offers' own sales do not "
        "count as evidence for the bundles already offered.",
    )
    session_gap_s: float = Field(
        1800.0, gt=0, description="A session's co-view/co-cart pseudo-order ends after this "
        "long without a click of its kind (event time)."
    )
    session_max_items: int = Field(
        50, ge=2, le=1000, description="Items that may join one session's pseudo-order."
    )
    session_capacity: int = Field(
        200_000, ge=1, description="Sessions tracked per clicks partition (least recently "
        "active forgotten first)."
    )


class OfferSettings(_Section):
    """How offers are built and when they are republished."""

    max_variants: int = Field(
        4, ge=1, le=8,
        description="Most variants an offer shows, whatever the policy: v0's pairs and "
        "triples; a learned version's best-scored variants (bundles at several discounts; "
        "fewer if its checkpoint says so), its probabilities renormalised over those shown. "
        "The trainer creates its policies with this value, so what it evaluates offline is "
        "what workers show.",
    )
    discount_pct: float = Field(10.0, ge=0, le=90, description="Discount of the v0 policy.")
    epsilon: float = Field(
        0.1, ge=0, le=1, description="Exploration mass spread uniformly over the variants."
    )
    min_interval_s: float = Field(
        5.0, ge=0, description="At most one offer per anchor per this many seconds (event "
        "time); an offer reconsidered and left unchanged is not reconsidered for as long "
        "(see max_recheck_interval_s)."
    )
    max_recheck_interval_s: float = Field(
        60.0, ge=0, description="Each further reconsideration in a row that leaves an offer "
        "unchanged doubles the wait before the next, from min_interval_s up to this many "
        "seconds (event time), so a change waits at most this long; a new offer starts over. "
        "At most min_interval_s: reconsidered every min_interval_s."
    )
    min_change: float = Field(
        0.05, ge=0, le=1, description="Share of an offer's probability mass that must move "
        "(total variation distance) before a revision is published; a new bundle price or "
        "number of variants always is. 0: every change."
    )
    ttl_s: float = Field(
        86_400.0,
        gt=0,
        description="Offers expire this long after publication; republished at half-life.",
    )
    price_check_interval_s: float = Field(
        60.0, ge=0, description="Each worker checks every live offer of its anchors against "
        "the catalogue about once per this many seconds (a slice per rewards.tick_interval_s) "
        "and revises an anchor whose offer quotes a stale bundle price (a partner's price "
        "changed), at the partition's event time. 0: off (an offer then reprices only when its "
        "anchor is revised, or expires)."
    )
    min_support: float = Field(2.0, ge=0, description="Pairs seen fewer times are not offered.")
    segment: str = Field(
        "all",
        min_length=1,
        max_length=32,
        description="Default segment: its offers are shown to shoppers without one of their own.",
    )
    segments: str = Field(
        "",
        description="Segments with offers of their own, comma-separated (at most 4); "
        "empty: one offer per anchor.",
    )

    @field_validator("segments")
    @classmethod
    def _check_segments(cls, value: str) -> str:
        names = segment_names(value)
        if len(names) > 4 or len(set(names)) != len(names):
            raise ValueError(f"at most 4 distinct segments, got {value!r}")
        if any(len(n) > 32 for n in names):
            raise ValueError(f"segment names are at most 32 characters, got {value!r}")
        return ",".join(names)

    @property
    def segment_names(self) -> tuple[str, ...]:
        """:attr:`segments` as a tuple of names."""
        return segment_names(self.segments)


def segment_names(text: str) -> tuple[str, ...]:
    """The names of a comma-separated segment list (blanks dropped).

    >>> segment_names(" loyal, bargain ,,"), segment_names("")
    (('loyal', 'bargain'), ())
    """
    return tuple(n.strip() for n in text.split(",") if n.strip())


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """Milliseconds in a duration like ``500ms``, ``10s``, ``1m``, ``1h``, ``1d``.

    >>> duration_ms("1m"), duration_ms("1.5s")
    (60000, 1500)
    """
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a positive duration like 10s, 1m or 1h: {text!r}")
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)])


def window_spec_ms(text: str) -> tuple[int, int]:
    """``(size_ms, step_ms)`` of a window spec: ``SIZE`` (tumbling) or ``SIZE/STEP`` (hopping).

    >>> window_spec_ms("1m"), window_spec_ms("1h/5m")
    ((60000, 60000), (3600000, 300000))
    """
    size, _, step = text.partition("/")
    size_ms = duration_ms(size)
    step_ms = duration_ms(step) if step else size_ms
    if step_ms > size_ms:
        raise ValueError(f"window step longer than its size: {text!r}")
    return size_ms, step_ms


class RewardSettings(_Section):
    """Live attribution of impressions to purchases and the windowed reward ledger."""

    attribution_window_s: float = Field(
        1800.0, gt=0, description="A purchase counts for an impression this long after it."
    )
    allowed_lateness_s: float = Field(
        300.0, ge=0, description="Events this far behind the newest one still count on time."
    )
    max_event_ahead_s: float = Field(
        300.0, ge=0,
        description="Events stamped further ahead of both their partition's event time and "
        "wall time are refused (too_early).",
    )
    windows: str = Field(
        "1m,1h/5m",
        description="Reward windows, comma-separated: SIZE (tumbling) or SIZE/STEP (hopping).",
    )
    ledger_lateness_s: float = Field(
        60.0, ge=0, description="How long a reward window waits for late outcomes."
    )
    by_anchor: bool = Field(False, description="Also publish windows per (version, anchor).")
    by_segment: bool = Field(False, description="Also publish windows per (version, segment).")
    reward: Literal["revenue", "margin"] = Field(
        "revenue", description="Reward of a conversion: bundle revenue or margin."
    )
    cost_ratio: float = Field(
        0.0, ge=0, lt=1, description="Cost as a share of list price (margin rewards)."
    )
    tick_interval_s: float = Field(
        1.0, gt=0, description="How often idle partitions move event time and close windows."
    )
    srm_alpha: float = Field(
        0.0005, gt=0, lt=1, description="p-value below which a sample-ratio mismatch alarms."
    )
    srm_expected_split: str | None = Field(
        None, description="Intended traffic shares of versions served side by side, e.g. "
        "v1=0.9,v2=0.1; unset: no split designed, SRM not tested."
    )
    min_impressions: int = Field(
        1000, ge=1, description="Impressions both windows need before a regression alarm."
    )
    min_conversions: int = Field(
        20, ge=0, description="Conversions the previous version's window needs for its bound."
    )
    history_windows: int = Field(
        500, ge=1, description="Closed windows kept per version and spec for the dashboard."
    )

    @field_validator("windows")
    @classmethod
    def _valid_windows(cls, value: str) -> str:
        if not [window_spec_ms(w) for w in value.split(",") if w.strip()]:
            raise ValueError("at least one reward window is needed")
        return value

    @field_validator("srm_expected_split")
    @classmethod
    def _valid_split(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_split(value)
        return value

    def window_specs_ms(self) -> list[tuple[int, int]]:
        """The ``(size_ms, step_ms)`` of every configured window.

        >>> RewardSettings().window_specs_ms()
        [(60000, 60000), (3600000, 300000)]
        """
        return [window_spec_ms(w) for w in self.windows.split(",") if w.strip()]

    def expected_split(self) -> dict[str, float] | None:
        """The intended traffic share per version, or None for an equal split.

        >>> RewardSettings(srm_expected_split="v1=0.9, v2=0.1").expected_split()
        {'v1': 0.9, 'v2': 0.1}
        """
        return None if self.srm_expected_split is None else _parse_split(self.srm_expected_split)


def _parse_split(text: str) -> dict[str, float]:
    split: dict[str, float] = {}
    for part in text.split(","):
        version, sep, share = part.partition("=")
        if not sep or not version.strip() or float(share) < 0:
            raise ValueError(f"expected VERSION=SHARE,...; got {text!r}")
        split[version.strip()] = float(share)
    return split


class PolicySettings(_Section):
    """What the learned policy learns from and is evaluated on (workers and trainer alike)."""

    reward_attribution: Literal["offer", "any"] = Field(
        "offer",
        description="Reward the policy trains, is gated and its conversion model labelled on: "
        "purchases through the offer (offer) or also baskets holding the bundle (any).",
    )


class TrainerSettings(_Section):
    """The trainer process (``streamer trainer``): feedback buffer, fine-tunes, promotion."""

    buffer_records: int = Field(
        1_000_000, ge=10, description="Feedback records kept for training (newest first out)."
    )
    every_records: int = Field(
        100_000, ge=1, description="Fine-tune after this many new feedback records."
    )
    every_s: float = Field(
        3600.0, gt=0, description="Fine-tune after this many seconds if any record is new."
    )
    min_records: int = Field(
        1_000, ge=2, description="No fine-tune before the buffer holds this many records."
    )
    epochs: int = Field(2, ge=1, description="Passes over the buffer per fine-tune.")
    min_steps: int = Field(
        200, ge=0, description="At least this many gradient steps per fine-tune (small buffers)."
    )
    batch_size: int = Field(4096, ge=1, description="Records per gradient step.")
    learning_rate: float = Field(3e-3, gt=0, description="Adam step size.")
    objective: Literal["dr", "ips"] = Field(
        "dr", description="Training objective: doubly robust or IPS policy gradient."
    )
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="Newest share of the buffer the gate evaluates on."
    )
    gate_confidence: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="Promotion gate: confidence of the paired interval of a candidate's reward "
        "over the live policy's, whose lower end must be above 0 (two-sided: 0.95 is a one-sided "
        "bound at 0.975; lower: promotes more often, on weaker evidence).",
    )
    unsupported_reward: float = Field(
        0.0,
        description="What the gate and the fine-tune take a variant the logging policy could "
        "not show to earn per impression: the least any variant can earn (0 for revenue; for "
        "margin rewards with discounts above the margin, the most negative margin).",
    )
    exploration_allowance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Promotion gate and fine-tune objective: share of a candidate's "
        "probability per decision on variants the logs never tried that is valued at the live "
        "policy's own estimate (the objective: its mean logged reward) instead of "
        "unsupported_reward; the excess is valued at the worst. Unset: what the candidate's "
        "floor forces there, the floor times the variants it shows beyond those the logs "
        "tried (0 where they tried as many as it shows).",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="Where to fine-tune: cuda when available (auto), else the CPU."
    )
    max_threads: int = Field(1, ge=1, description="torch CPU threads (capped: hosts are shared).")
    max_actions: int = Field(
        32, ge=1, le=64, description="Variants per logged decision kept (bundles x discounts)."
    )
    offer_index_size: int = Field(
        200_000, ge=100, description="Offers remembered by id to decode feedback records."
    )
    seed: int = Field(0, description="Seed of the initial policy's weights and of training.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus /metrics port (0: not served)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Bind address of the /metrics port (localhost only; docker-compose.yml "
        "binds 0.0.0.0 inside its container for Prometheus).",
    )


class DemoSettings(_Section):
    """The simulated storefront of ``streamer demo``."""

    shoppers_per_s: float = Field(100.0, gt=0, description="Simulated sessions per second.")
    catalogue_size: int = Field(200, ge=10, description="Items in the simulated catalogue.")
    seed: int = Field(7, description="Random seed of the simulation.")


class Settings(BaseSettings):
    """The whole configuration tree."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER__",
        env_nested_delimiter="__",
        env_file=".env",
        # Only the .env lines with our prefix are ours (by default every line reaches the
        # model, and extra="forbid" rejected a shared .env's COMPOSE_PROJECT_NAME); those that
        # name no setting still reach it, and fail below.
        dotenv_filtering="match_prefix",
        extra="forbid",
        # An error about the whole tree would print every value set, secrets included.
        hide_input_in_errors=True,
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    worker: WorkerSettings = WorkerSettings()
    copurchase: CoPurchaseSettings = CoPurchaseSettings()
    offers: OfferSettings = OfferSettings()
    rewards: RewardSettings = RewardSettings()
    policy: PolicySettings = PolicySettings()
    trainer: TrainerSettings = TrainerSettings()
    demo: DemoSettings = DemoSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _PrefixedEnvSource(settings_cls), dotenv_settings,
                file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _known_sections(cls, data: Any) -> Any:
        # pydantic's own "Extra inputs are not permitted" would name `offer__ttl_s`, neither
        # the variable that was set nor what it should have been.
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(
                        f"unknown setting STREAMER__{key.upper()}: variables are "
                        "STREAMER__SECTION__FIELD, the sections "
                        f"{', '.join(s.upper() for s in cls.model_fields)}")
        return data


class _PrefixedEnvSource(EnvSettingsSource):
    """The environment, with the ``STREAMER__`` variables of no section passed on too.

    pydantic-settings looks up the variables of the fields it knows, so a misspelt section
    (``STREAMER__OFFER__TTL_S``) was never read, and never an error; this hands such a
    variable to the model under its name without the prefix, as ``dotenv_filtering=
    "match_prefix"`` does for a ``.env``, where ``Settings`` rejects it.
    """

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        prefix = self._apply_case_sensitive(self.env_prefix)
        for name, value in self.env_vars.items():
            if name.startswith(prefix):
                key = name[len(prefix):]
                section = key.partition(self.env_nested_delimiter or "__")[0]
                if section not in self.settings_cls.model_fields:
                    data[key] = value
        return data


def reference_markdown() -> str:
    """The configuration reference as Markdown tables (README's "Configuration" section is
    this text; a test keeps them equal)."""
    out: list[str] = []
    for name, info in Settings.model_fields.items():
        section = info.annotation
        assert isinstance(section, type) and issubclass(section, BaseModel)
        doc = (section.__doc__ or "").strip()
        out += [
            "",
            f"### `{name}`",
            "",
            doc,
            "",
            "| variable | default | meaning |",
            "|---|---|---|",
        ]
        for field, f in section.model_fields.items():
            default = "—" if f.default is None else f"`{f.default}`"
            out.append(
                f"| `STREAMER__{name.upper()}__{field.upper()}` | {default} | {f.description} |"
            )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
