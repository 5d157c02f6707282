"""Batches of a faust stream's events for an agent, taken from the stream's channel queue.

Written against faust-streaming 0.15.3. Stock ``Stream.take_events(max_, within)`` waits for a
full buffer with mode's ``wait_for_stopped(buffer_full, timeout=within)`` in a loop: every
``within`` seconds (the worker's ``batch_linger_ms``, 5 ms) it wakes, whether events came or
not, and each wait is a ``wait_first``: four tasks and an ``asyncio.wait``. An agent with
nothing to do (the clicks agent while only purchases flow) woke 200 times a second, and a busy
one paid the tasks per batch: ``take_events`` was 11% of the worker's CPU on the throughput
benchmark. And every event still went one by one through the stream's iterator (a task of
its own, the passive drainer), its sensors, and a buffering processor awaited per event.

:func:`take_batches` reads the events off the stream's channel queue itself, where the
conductor puts them: it sleeps on the queue until an event comes (an idle agent costs nothing
and has no timer), lingers ``within`` for more (one sleep per batch; not when the queue already
holds a full batch), then takes what the queue holds, up to ``max_``. Per event it does what
faust's stream iterator (``faust._cython.streams.StreamIterator``) does before a value reaches
an agent: an event of an older consumer generation, or one that arrives while flow control is
suspended for a rebalance, is dropped unacked (its partition is fetched again from its
committed offset); an event of an acking topic is tracked by the consumer (pending ack: a
rebalance waits for it); per event, stream sensors are not called (streamer's metrics are its
own); processors added to the stream are run on each event's value for their effects only
(``take_events`` ignored their results too; faust's agent test wrapper adds one). Events are
acked once the agent body is done with the batch (when the generator resumes, or is closed),
never before, as faust's iterator acks in a ``finally``; a rebalance waits for those acks
(``Consumer.wait_empty``) before it moves partitions. While the body runs, nothing is read:
new events wait in the queue, and a full queue pushes back on the conductor (faust's flow
control), as a full ``take_events`` buffer did. An agent stopped while it waits for an event
is cancelled there, as an agent iterating its stream is.

Measured (``PYTHONPATH=. python benchmarks/throughput.py --only streamer --ref DIR``, the
previous version, which fed a buffer from the stream's iterator, in ``DIR``; 20,000
purchases, medians of 5 interleaved repeats): 156 vs 175 us of worker CPU per event, 5,989 vs
4,789 events/s; in a second run (``--fresh-broker``) 142 vs 153 us, 5,706 vs 5,135 events/s:
7-11 % less CPU per event. Tried: handing over what the queue held right after the first
event, without the linger; batches then stayed small under load and the worker spent 20% more
CPU per event than before (207 vs 172 us); before that, in the iterator-fed version, sending
an event that finds the agent idle at once cost 27% more CPU per purchase (267 vs 210 us).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from faust.types import EventT, StreamT
from mode.utils.futures import maybe_async

__all__ = ["take_batches"]


def take_batches(stream: StreamT[Any], max_: int, within: float,
                 ) -> AsyncIterator[list[EventT[Any]]]:
    """Batches of up to ``max_`` events of ``stream``: after a batch's first event,
    ``within`` seconds are waited for more (not when ``max_`` are already waiting). Events of
    a batch are acked when the loop body that got the batch is done (the next iteration
    starts or the loop ends). Use as ``async for events in take_batches(stream, 1000,
    0.005)``, like ``take_events``."""
    if max_ < 1 or not within > 0:
        raise ValueError("max_ must be positive and within a positive number of seconds")
    agen = _take_batches(stream, max_, within)
    stream._active_agens.add(agen)  # type: ignore[attr-defined]  # finalized on stream stop
    return agen


async def _take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[list[EventT[Any]]]:
    app = stream.app
    queue = stream.channel.queue
    flow_control = app.flow_control
    acking_topics = app.topics._acking_topics  # what the stream iterator reads
    on_message_out = stream._on_message_out
    empty, get, get_nowait, qsize = queue.empty, queue.get, queue.get_nowait, queue.qsize
    batch: list[EventT[Any]] = []

    def admit(event: Any) -> None:
        message = event.message
        if not flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            return  # as the stream iterator: dropped unacked, fetched again
        if message.topic in acking_topics and not message.tracked:
            message.tracked = True
            app.consumer.track_message(message)  # pending ack, and the message-in sensors
        batch.append(event)

    await stream.maybe_start()
    while not stream.should_stop:
        try:
            if not batch:
                admit(await get())  # sleeps until an event comes
                if not batch:
                    continue
                if qsize() + 1 < max_:  # linger for more, unless a full batch is waiting
                    await asyncio.sleep(within)
            while len(batch) < max_ and not empty():
                admit(get_nowait())
        except StopAsyncIteration:
            return  # the channel ends (the agent is stopping), as the stream iterator ends
        taken, batch = batch, []
        for processor in stream._processors:  # none in the worker; run for their effects
            for event in taken:
                await maybe_async(processor(event.value))
        try:
            yield taken
        finally:
            for event in taken:  # Stream.ack without its per-event sensor call
                if event.ack():
                    message = event.message
                    on_message_out(message.tp, message.offset, message)
