"""``streamer replay``: produce historical events to ``clicks`` / ``purchases``.

Events go out in event-time order (the readers sort them), keyed by session id like a live
storefront's, with their original timestamps as Kafka timestamps, at ``speed`` x real time or
as fast as possible. Sends are pipelined (bounded in flight) and every delivery is confirmed
before the summary is printed; a failed send is counted and reported, never ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
from aiokafka import AIOKafkaProducer

from streamer.app.kafka import aiokafka_kwargs, start_client
from streamer.events import Event, PurchaseEvent
from streamer.replay.pacing import ReplayPacer
from streamer.settings import Settings

MAX_IN_FLIGHT = 5_000


@dataclass
class ReplaySummary:
    """What a replay sent."""

    sent: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None

    @property
    def events(self) -> int:
        return sum(self.sent.values())

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        per_topic = ", ".join(f"{t}: {n:,}" for t, n in sorted(self.sent.items()))
        first = f" (first: {self.first_error})" if self.first_error else ""
        return (f"{self.events:,} events in {self.seconds:.1f} s ({self.rate:,.0f}/s): "
                f"{per_topic}\nerrors: {self.errors}{first}")


async def replay_events(
    settings: Settings,
    events: Iterable[Event],
    *,
    speed: float | None,
    on_sent: Callable[[Event], None] | None = None,
) -> ReplaySummary:
    """Produce ``events`` (already in event-time order) and wait for every acknowledgement."""
    t = settings.topics
    summary = ReplaySummary()
    pacer = ReplayPacer(speed)
    encode = msgspec.json.Encoder().encode
    producer = AIOKafkaProducer(**aiokafka_kwargs(settings.kafka), linger_ms=20,
                                max_batch_size=256 * 1024)
    await start_client(producer)
    pending: set[asyncio.Future[object]] = set()

    def settle(done: Iterable[asyncio.Future[object]]) -> None:
        for f in done:
            if f.exception() is not None:
                summary.errors += 1
                summary.first_error = summary.first_error or repr(f.exception())

    start = time.monotonic()
    try:
        for event in events:
            delay = pacer.delay_s(event_ts_ms=event.ts, elapsed_s=time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)  # pacing history at the requested speed
            topic = t.purchases if isinstance(event, PurchaseEvent) else t.clicks
            fut = await producer.send(topic, encode(event), key=event.session_id.encode(),
                                      timestamp_ms=event.ts)
            pending.add(fut)
            summary.sent[topic] = summary.sent.get(topic, 0) + 1
            summary.first_ts = summary.first_ts if summary.first_ts is not None else event.ts
            summary.last_ts = event.ts
            if on_sent is not None:
                on_sent(event)
            if len(pending) >= MAX_IN_FLIGHT:
                done, pending_left = await asyncio.wait(pending,
                                                        return_when=asyncio.FIRST_COMPLETED)
                settle(done)
                pending = set(pending_left)
        if pending:
            done, _ = await asyncio.wait(pending)
            settle(done)
    finally:
        await producer.stop()
    summary.seconds = time.monotonic() - start
    return summary
