"""Batches of a faust stream's events for an agent: faust's ``Stream.take_events`` without its
polling.

Written against faust-streaming 0.15.3. ``take_events(max_, within)`` waits for a full buffer
with mode's ``wait_for_stopped(buffer_full, timeout=within)`` in a loop: every ``within``
seconds (the worker's ``batch_linger_ms``, 5 ms) it wakes, whether events came or not, and
each wait is a ``wait_first``: four tasks and an ``asyncio.wait``. An agent with nothing to do
(the clicks agent while only purchases flow) woke 200 times a second, and a busy one paid the
tasks per batch: ``take_events`` was 11% of the worker's CPU on the throughput benchmark.
:func:`take_batches` sleeps on a bare future until an event arrives (an idle agent costs
nothing), then lingers up to ``within`` for more (one timer), and yields at most ``max_``.
The linger runs from the first event, so a lone event waits ``within`` (``take_events``: until
its next tick, half that on average). Tried: sending an event that finds the agent idle at
once; then each fetch's first purchase and most item-baskets messages were batches of their
own, and the worker spent 27% more CPU per purchase (267 vs 210 us, throughput benchmark).

Everything else is ``take_events``' own: the same processor fills the buffer as the stream is
drained in the background; events are acked once the agent body is done with the batch
(when the generator resumes), never before; while the body runs, the processor holds the next
event back (so a batch never grows under the body's feet), and a full buffer waits until it
has been taken; the generator is registered with the stream so that stopping the stream
finalizes it. An idle agent looks once a second whether its stream stopped (``take_events``
races the stream's stop event with tasks on every wait).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from faust.types import EventT, StreamT

__all__ = ["take_batches"]

#: How often an idle agent's wait for its first event checks whether its stream stopped.
_IDLE_CHECK_S = 1.0


def take_batches(stream: StreamT[Any], max_: int, within: float) -> AsyncIterator[list[EventT]]:
    """Batches of up to ``max_`` events of ``stream``: from the first event on, at most
    ``within`` seconds are waited for more. Events of a batch are acked when the loop body
    that got the batch is done (the next iteration starts or the loop ends). Use as
    ``async for events in take_batches(stream, 1000, 0.005)``, like ``take_events``."""
    if max_ < 1 or not within > 0:
        raise ValueError("max_ must be positive and within a positive number of seconds")
    agen = _take_batches(stream, max_, within)
    stream._active_agens.add(agen)  # type: ignore[attr-defined]  # finalized on stream stop
    return agen


async def _take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[list[EventT]]:
    loop = asyncio.get_running_loop()
    events: list[EventT] = []
    # Resolved by the processor when the agent should look: the first event of a batch has
    # come (``wake_on_first``), or the buffer is full.
    waiter: asyncio.Future[None] | None = None
    wake_on_first = True
    consuming: asyncio.Future[None] | None = None  # set while the agent body has a batch
    taken = asyncio.Event()  # a full buffer was taken
    enable_acks = stream.enable_acks
    channel_it = aiter(stream.channel)

    def wake() -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        try:
            if consuming is not None:  # the body has a batch: this event waits for the next
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            events.append(event)
            n = len(events)
            if n >= max_ or (n == 1 and wake_on_first):
                wake()
            if n >= max_:
                # Strict: a batch never exceeds max_ events (as take_events).
                taken.clear()
                await stream.wait(taken)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked here, once the body is done with them
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            if not events:  # sleep until the first event (no task; a timer a second)
                wake_on_first = True
                waiter = loop.create_future()
                # Now and then, to see whether the stream stopped (take_events races its
                # stop event with tasks; a stopped agent is cancelled anyway).
                timer = loop.call_later(_IDLE_CHECK_S, wake)
                try:
                    await waiter
                finally:
                    timer.cancel()
                if not events:
                    continue
            if len(events) < max_:  # linger for more, up to within
                wake_on_first = False
                waiter = loop.create_future()
                timer = loop.call_later(within, wake)
                try:
                    await waiter
                finally:
                    timer.cancel()
            waiter = None
            batch = list(events)
            consuming = loop.create_future()
            try:
                yield batch
            finally:
                events.clear()
                for event in batch:
                    await stream.ack(event)
                if not consuming.done():
                    consuming.set_result(None)
                taken.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
        if waiter is not None and not waiter.done():
            waiter.cancel()
