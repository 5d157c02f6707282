"""Batches of a faust stream's messages for an agent, taken from the stream's channel queue,
or handed over by the consumer without it (:class:`DirectQueue`).

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

**Straight from the consumer.** Even so each message went through faust's conductor on its way
to the queue: a lock and a handler coroutine per message, flow control and the producer
buffer awaited, an ``Event`` made of it, the queue's put with its pressure callbacks, and the
event's own ack afterwards. For the topics it is given (the worker's ``clicks``, ``purchases``
and item baskets: each read by one agent, whose values it decodes itself),
:class:`~streamer.app.fast_consumer.FastConsumer` appends each message to the topic's
:class:`DirectQueue` instead, and :func:`take_batches` takes batches of messages from there,
keeping what the conductor and the stream iterator did that matters (see :class:`DirectQueue`
and the semantics above: generation, flow control, pending acks, acks after the body, the
channel that ends the loop when the agent stops). Measured: see *Straight from the drain loop
to the agent* in ``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from faust.types import TP, EventT, Message, StreamT
from mode.utils.futures import maybe_async

__all__ = ["DirectQueue", "take_batches"]


class DirectQueue:
    """The messages of one topic, handed by :class:`~streamer.app.fast_consumer.FastConsumer`'s
    drain loop straight to the one agent that reads the topic with :func:`take_batches`.

    A message of such a topic skips faust's conductor (its lock, its handler coroutine, the
    event faust makes of the message, the channel queue and its pressure callbacks) and the
    event's own ack: it is appended here, and :func:`take_batches` admits and acks it as it
    would the event. What the conductor does for a message is kept:

    - a message arriving while flow control is suspended (a rebalance), or while faust's
      producer buffer is over its limit, waits for them as the conductor does, racing the
      consumer's ``suspend_flow`` as stock faust's delivery does (:meth:`put_when_flowing`);
    - a partition whose messages pile up to ``maxsize`` stops being fetched until the agent
      has taken them down to 40 % of it (``Consumer.on_buffer_full`` / ``on_buffer_drop``, as
      the channel queue's pressure callbacks, and faust's buffer-full sensor). Unlike the
      channel queue the drain loop is never blocked: what was fetched already is appended, at
      most about one fetch per partition more (a paused partition is not fetched again);
    - the queue is emptied when flow control resumes after a rebalance, as faust's channel
      queues are (their messages are fetched again from the committed offsets);
    - the message holds one reference, the one channel's.

    The consumer hands messages over only while an agent reads the queue (:attr:`reader`, set
    by :func:`take_batches` for as long as its loop runs); before that, or once it stops, they
    go through the conductor to the agent's channel, and :func:`take_batches` takes those
    first. A topic routed here must be read by that one agent alone: :func:`take_batches`
    refuses to start when it sees another channel reading it (one added later would get
    nothing, and its partitions would pause for good once ``maxsize`` wait here).
    """

    __slots__ = (
        "__weakref__",
        "_consumer",
        "_flow_control",
        "_high",
        "_low",
        "_paused",
        "_producer_full",
        "_wait_until_ebb",
        "_waiter",
        "messages",
        "reader",
    )

    def __init__(self, consumer: Any, flow_control: Any, maxsize: int,
                 producer_full: Callable[[], bool] = bool,
                 wait_until_ebb: Callable[[], Awaitable[None]] | None = None) -> None:
        self.messages: deque[Message] = deque()
        #: The channel of the agent taking batches from here (None: none does now).
        self.reader: Any = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused: set[TP] = set()
        self._high = maxsize
        self._low = int(maxsize * 0.4)
        self._consumer = consumer
        self._flow_control = flow_control
        #: Whether faust's producer buffer is over its limit, and a wait until it is not
        #: (``FastConsumer``'s; the conductor awaits the latter before every delivery).
        self._producer_full = producer_full
        self._wait_until_ebb = wait_until_ebb
        flow_control.manage_queue(self)  # cleared on resume, with the channel queues

    def put(self, message: Message, *, ebbed: bool = False) -> bool:
        """Append ``message`` unless flow control is suspended or the producer buffer over its
        limit (``ebbed``: not asked, waited for already); False then (:meth:`put_when_flowing`).
        """
        if not self._flow_control.is_active() or (not ebbed and self._producer_full()):
            return False
        message.refcount += 1  # Message.incref without its lock, as faust's conductor does
        messages = self.messages
        messages.append(message)
        if len(messages) >= self._high:
            # faust's TP: message.tp may be aiokafka's TopicPartition, which the consumer's
            # active partitions must not hold.
            tp = TP(message.topic, message.partition)
            if tp not in self._paused:
                self._paused.add(tp)
                consumer = self._consumer
                consumer.app.sensors.on_topic_buffer_full(tp)
                consumer.on_buffer_full(tp)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    async def put_when_flowing(self, message: Message) -> None:
        """Append ``message`` once flow control resumes, after one wait for the producer
        buffer to ebb, as the conductor does (the consumer races this against its
        ``suspend_flow``, which drops the message, as stock faust's delivery)."""
        while True:
            await self._flow_control.acquire()
            if self._wait_until_ebb is not None:
                await self._wait_until_ebb()
            if self.put(message, ebbed=True):
                return

    def waiter(self) -> asyncio.Future[None]:
        """A future done once a message is waiting (now, if one is)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self.messages:
            self._waiter = None
            waiter.set_result(None)
        return waiter

    def taken(self) -> None:
        """Fetch paused partitions again once the queue is down to 40 % of ``maxsize``."""
        if self._paused and len(self.messages) <= self._low:
            on_drop = self._consumer.on_buffer_drop
            for tp in self._paused:
                on_drop(tp)
            self._paused.clear()

    def clear(self) -> None:
        """Empty the queue (flow control resumed after a rebalance). Paused partitions are
        forgotten, not made active: the consumer sets its active partitions from the new
        assignment (faust's ``on_buffer_drop`` here re-added partitions the rebalance had
        just paused)."""
        self.messages.clear()
        buffered = self._consumer._buffered_partitions
        for tp in self._paused:
            buffered.discard(tp)
        self._paused.clear()


def take_batches(stream: StreamT[Any], max_: int, within: float,
                 ) -> AsyncIterator[list[Message]]:
    """Batches of up to ``max_`` messages of ``stream``: after a batch's first message,
    ``within`` seconds are waited for more (not when ``max_`` are already waiting). Messages
    of a batch are acked when the loop body that got the batch is done (the next iteration
    starts or the loop ends). Use as ``async for messages in take_batches(stream, 1000,
    0.005)``, like ``take_events``. The messages are faust's as the consumer read them: their
    ``value`` is the bytes on the wire, whatever the topic's schema would decode (the
    worker's topics hand values over as they came: ``streamer.app.kafka.WireSchema``)."""
    if max_ < 1 or not within > 0:
        raise ValueError("max_ must be positive and within a positive number of seconds")
    direct = _direct_queue(stream)
    agen = (_take_direct(stream, direct, max_, within) if direct is not None
            else _take_batches(stream, max_, within))
    stream._active_agens.add(agen)  # type: ignore[attr-defined]  # finalized on stream stop
    return agen


def _direct_queue(stream: Any) -> DirectQueue | None:
    """The consumer's :class:`DirectQueue` for ``stream``'s topic, when it has one; raises
    when its messages would go there but another channel reads them too, or a channel of
    several topics or a pattern reads a topic routed there."""
    routes = getattr(stream.app.consumer, "direct_routes", None)
    if not routes:
        return None
    names: Any = getattr(stream.channel, "topics", ())
    routed = [name for name in names if name in routes]
    if not routed:
        return None
    if len(names) != 1 or getattr(stream.channel, "pattern", None):
        raise RuntimeError(f"topics {routed} are delivered straight to one agent each, "
                           "which must read that topic alone")
    name = names[0]
    others = [c for c in stream.app.topics._topics
              if name in getattr(c, "topics", ()) and c is not stream.channel]
    if others:
        raise RuntimeError(f"topic {name!r} is delivered straight to one agent, but "
                           f"{len(others)} more channel(s) read it")
    return cast(DirectQueue, routes[name])


async def _take_direct(stream: Any, direct: DirectQueue, max_: int, within: float,
                       ) -> AsyncIterator[list[Message]]:
    app = stream.app
    consumer = app.consumer
    flow_control = app.flow_control
    acking_topics = app.topics._acking_topics  # per message: the conductor fills it later
    track = consumer.track_message
    on_message_out = stream._on_message_out
    messages = direct.messages
    popleft = messages.popleft
    waiter = direct.waiter
    first_completed = asyncio.FIRST_COMPLETED
    batch: list[Message] = []

    def admit(message: Message) -> None:
        if message.generation_id != generation or not active:
            return  # as the stream iterator: dropped unacked, fetched again
        if message.topic in acking_topics and not message.tracked:
            message.tracked = True
            track(message)  # pending ack, and the message-in sensors
        batch.append(message)

    await stream.maybe_start()
    # The stream's channel: what came before the consumer handed messages here (or once this
    # loop stops, for the next), and the end of the loop: stopping an agent throws
    # StopAsyncIteration into its channel (faust's Actor.cancel). faust cancels the agent's
    # task right after, so the loop mostly ends by that cancellation, its body not resumed.
    channel = stream.channel
    queue = channel.queue
    getters = queue._getters  # asyncio.Queue's, which mode's ThrowableQueue throws into too
    loop = asyncio.get_running_loop()
    on_channel: asyncio.Future[None] | None = None
    direct.reader = channel
    try:
        while not stream.should_stop:
            if not messages and queue.empty():
                # Woken by a message handed here, or by the channel: a put or an error wakes
                # a getter of its queue without taking anything, the items are taken below,
                # in order.
                on_channel = loop.create_future()
                getters.append(on_channel)
                await asyncio.wait((waiter(), on_channel), return_when=first_completed)
                if on_channel.done():
                    error = on_channel.exception()
                    if isinstance(error, StopAsyncIteration):
                        return  # the channel ends (the agent is stopping), as a stream ends
                    if error is not None:
                        raise error
                else:
                    on_channel.cancel()
                    getters.remove(on_channel)
                on_channel = None
            generation = app.consumer_generation_id
            active = flow_control.is_active()
            try:
                while len(batch) < max_ and not queue.empty():  # older than those handed here
                    admit(queue.get_nowait().message)
            except StopAsyncIteration:
                return
            if len(messages) + len(batch) < max_:  # linger for more, unless a batch waits
                await asyncio.sleep(within)
                generation = app.consumer_generation_id
                active = flow_control.is_active()
            for _ in range(min(max_ - len(batch), len(messages))):
                admit(popleft())
            direct.taken()
            if not batch:
                continue
            taken, batch = batch, []
            for processor in stream._processors:  # none in the worker; run for their effects
                for message in taken:
                    await maybe_async(processor(message.value))
            try:
                yield taken
            finally:
                for message in taken:  # Event.ack, Stream.ack without the sensor call
                    if message.ack(consumer):
                        on_message_out(message.tp, message.offset, message)
    finally:
        if on_channel is not None and not on_channel.done():
            on_channel.cancel()
            with contextlib.suppress(ValueError):
                getters.remove(on_channel)
        if direct.reader is channel:
            direct.reader = None


async def _take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[list[Message]]:
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
            yield [event.message for event in taken]
        finally:
            for event in taken:  # Stream.ack without its per-event sensor call
                if event.ack():
                    message = event.message
                    on_message_out(message.tp, message.offset, message)
