"""One settings tree, built once at start-up and passed down.

Every field can be set from the environment as ``STREAMER__SECTION__FIELD`` (for example
``STREAMER__KAFKA__BOOTSTRAP_SERVERS=kafka:9092``) or from a ``.env`` file. Domain classes never
see this object: the composition root (``streamer.app``) hands them plain values.

>>> s = Settings(kafka={"bootstrap_servers": "127.0.0.1:9092"})
>>> s.kafka.bootstrap_servers, s.topics.offers
('127.0.0.1:9092', 'offers')
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """How to reach Kafka. Security settings pass through to faust and aiokafka unchanged."""

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: str | None = Field(None, description="CA bundle to verify the brokers (TLS).")
    ssl_certfile: str | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: str | None = Field(None, description="Client private key (mutual TLS).")
    session_timeout_s: float = Field(
        6.0, gt=0, description="Consumer group session timeout; low values join groups fast."
    )
    rebalance_timeout_s: float = Field(6.0, gt=0, description="Consumer group rebalance timeout.")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="Consumer heartbeat interval.")
    max_message_bytes: int = Field(
        256 * 1024, gt=0, description="Messages larger than this are dead-lettered undecoded."
    )


class TopicSettings(_Section):
    """Topic names and partition counts (see design.md section 2)."""

    clicks: str = Field("clicks", description="Storefront interactions (ClickEvent).")
    purchases: str = Field("purchases", description="Completed orders (PurchaseEvent).")
    offers: str = Field("offers", description="Published offers (BundleOffer), keyed by anchor.")
    feedback: str = Field("feedback", description="Impressions joined with outcomes.")
    rewards: str = Field("rewards", description="Windowed reward aggregates (RewardWindow).")
    policy_updates: str = Field("policy-updates", description="Promoted policy versions.")
    dead_letters: str = Field("dead-letters", description="Messages that failed validation.")
    partitions: int = Field(4, ge=1, description="Partitions of the topics streamer creates.")
    replication_factor: int = Field(1, ge=1, description="Replication of created topics.")


class WorkerSettings(_Section):
    """The faust worker."""

    app_id: str = Field("streamer", description="Faust app id: consumer group and table prefix.")
    data_dir: str = Field(
        "/tmp/streamer-data", description="Where faust keeps local table state."
    )
    web_host: str = Field("127.0.0.1", description="Web server bind address (localhost only).")
    web_port: int = Field(6066, ge=0, le=65535, description="Web server port (0: any free).")
    commit_interval_s: float = Field(1.0, gt=0, description="Offset commit interval.")
    dedup_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="How long an event_id is remembered for de-duplication."
    )
    dedup_capacity: int = Field(
        1_000_000, gt=0, description="At most this many event ids remembered per partition."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the worker."
    )


class CoPurchaseSettings(_Section):
    """The co-purchase statistics behind candidate bundles."""

    half_life_days: float = Field(
        30.0, gt=0, description="Event-time half-life of co-purchase counts, in days."
    )
    top_k: int = Field(50, ge=1, le=1000, description="Partners tracked per item (Space-Saving).")
    max_triples: int = Field(1, ge=0, le=4, description="3-item variants per offer.")


class OfferSettings(_Section):
    """How offers are built and when they are republished."""

    max_variants: int = Field(4, ge=1, le=8, description="Variants per offer.")
    discount_pct: float = Field(10.0, ge=0, le=90, description="Discount of the v0 policy.")
    epsilon: float = Field(
        0.1, ge=0, le=1, description="Exploration mass spread uniformly over the variants."
    )
    min_interval_s: float = Field(
        5.0, ge=0, description="At most one offer per anchor per this many seconds."
    )
    ttl_s: float = Field(
        86_400.0,
        gt=0,
        description="Offers expire this long after publication; republished at half-life.",
    )
    min_support: float = Field(2.0, ge=0, description="Pairs seen fewer times are not offered.")
    segment: str = Field("all", description="Segment name of published offers.")


class DemoSettings(_Section):
    """The simulated storefront of ``streamer demo``."""

    shoppers_per_s: float = Field(50.0, gt=0, description="Simulated sessions per second.")
    catalogue_size: int = Field(200, ge=10, description="Items in the simulated catalogue.")
    seed: int = Field(7, description="Random seed of the simulation.")


class Settings(BaseSettings):
    """The whole configuration tree."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER__",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    worker: WorkerSettings = WorkerSettings()
    copurchase: CoPurchaseSettings = CoPurchaseSettings()
    offers: OfferSettings = OfferSettings()
    demo: DemoSettings = DemoSettings()


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
