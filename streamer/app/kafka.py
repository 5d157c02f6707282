"""Kafka client settings, mapped once from :class:`~streamer.settings.KafkaSettings` for both
faust (``broker_credentials``) and aiokafka (keyword arguments)."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from streamer.settings import KafkaSettings


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
