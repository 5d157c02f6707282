"""streamer.app.batching.take_batches: faust's take_events semantics (batches of at most max_,
acks after the body) taken straight off the channel queue, with what faust's stream iterator
does per event kept (generation check, pending-ack tracking, processors, end of channel) and
no wake-up while idle; and the same taken from a DirectQueue that FastConsumer._deliver fills
without faust's conductor (flow control, pressure on the partition, clear on resume as the
conductor and the channel queue have them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streamer.app.batching import DirectQueue, take_batches
from streamer.app.kafka import WireSchema
from tests.conftest import quiescent, until
from tests.unit.test_fast_consumer import FakeConsumer


def run_agent(max_: int, within: float, scenario: Any, **conf: Any) -> list[list[int]]:
    app = faust.App("batching-unit", broker="kafka://127.0.0.1:9", store="memory://", **conf)
    batches: list[list[int]] = []
    acked_in_body: list[bool] = []
    gate = asyncio.Event()
    ended: list[bool] = []

    @app.agent()
    async def agent(stream: Any) -> None:
        async for messages in take_batches(stream, max_, within):
            batches.append([m.value for m in messages])
            acked_in_body.append(any(m.acked for m in messages))
            await gate.wait()
        ended.append(True)

    async def main() -> None:
        async with agent.test_context() as wrapper:
            await scenario(wrapper, batches, gate)
        assert not any(acked_in_body), "events are acked only once the body is done"
        # Stopping the agent ends its channel: the loop ends as a stream's would, with no
        # error (one made faust restart the agents while the worker stopped, and hang).
        assert ended == [True]

    asyncio.run(main())
    return batches


def test_events_that_come_together_form_one_batch_of_at_most_max() -> None:
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        gate.set()
        for i in range(7):
            await wrapper.put(i, wait=False)
        await until(lambda: sum(map(len, batches)) == 7, "all seven events taken")

    batches = run_agent(3, 0.05, scenario)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [v for b in batches for v in b] == list(range(7))


def test_events_wait_while_the_body_has_a_batch_and_are_acked_after_it() -> None:
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        first = await wrapper.put(0, wait=False)
        await until(lambda: batches, "the first batch")
        await wrapper.put(1, wait=False)
        assert not first.message.acked  # the body still has it
        gate.set()
        await until(lambda: len(batches) == 2, "the second batch")
        assert first.message.acked
        assert batches == [[0], [1]]  # not added to the batch the body had

    run_agent(10, 0.001, scenario)


def test_an_idle_agent_does_not_wake() -> None:
    """No event, no wake-up: the idle agent sleeps on its channel's queue with no timer at
    all (take_events has a timer due within 5 ms, and again after each wake)."""
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        loop: Any = asyncio.get_running_loop()
        queue = wrapper.stream().channel.queue
        (actor,) = wrapper._actors
        task = actor.actor_task

        def on_a_timer() -> bool:  # the future the agent's task waits on is a timer's
            waiting = task._fut_waiter
            return any(h._args and h._args[0] is waiting for h in loop._scheduled)

        await until(lambda: queue._getters, "the agent waiting on its queue")
        await quiescent()  # the agent has done all it does without an event
        assert batches == [] and task._fut_waiter is not None and not on_a_timer()
        gate.set()
        await wrapper.put(5, wait=False)
        await until(on_a_timer, "the agent lingering after the event (the check sees timers)")
        await until(lambda: batches == [[5]], "the event")

    run_agent(10, 0.005, scenario)


def test_a_full_batch_waiting_is_taken_without_lingering() -> None:
    """The linger is for more events to come: ``max_`` already queued go at once."""
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        gate.set()
        for i in range(4):
            await wrapper.put(i, wait=False)
        # A linger of an hour would stall the first batch; none is taken for it.
        await until(lambda: batches[:2] == [[0, 1], [2, 3]], "two full batches", 5.0)

    run_agent(2, 3600.0, scenario)


def test_a_batch_is_at_most_what_the_streams_buffer_holds() -> None:
    """The batch is taken from the stream's buffer: events beyond its size wait outside it
    (faust's flow control), so a buffer smaller than ``max_`` cuts every batch, and the
    worker sizes its buffers to ``worker.batch_max`` (tests/unit/test_tables.py)."""
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        gate.set()
        for i in range(10):
            await wrapper.put(i, wait=False)  # waits while the buffer is full
        await until(lambda: sum(map(len, batches)) == 10, "all ten events taken")

    batches = run_agent(10, 0.2, scenario, stream_buffer_maxsize=4)
    assert [v for b in batches for v in b] == list(range(10))
    assert max(map(len, batches)) <= 5  # the first event taken, then what the buffer held
    assert len(batches) >= 2


def test_events_of_an_older_consumer_generation_are_dropped_unacked() -> None:
    """As faust's stream iterator: an event fetched before a rebalance (an older consumer
    generation) never reaches the body and is not acked (its partition is read again from
    its committed offset)."""
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        app = wrapper.stream().app
        await wrapper.put(0, wait=False)
        await until(lambda: batches, "the first batch")  # the body holds it
        stale = await wrapper.put(1, wait=False)
        app.consumer_generation_id += 1  # a rebalance while event 1 waits in the queue
        fresh = await wrapper.put(2, wait=False)
        gate.set()
        await until(lambda: len(batches) == 2, "the next batch")
        assert batches == [[0], [2]]
        await until(lambda: fresh.message.acked, "the taken event acked")
        assert not stale.message.acked

    run_agent(10, 0.001, scenario)


def test_events_of_an_acking_topic_are_pending_acks_while_the_body_has_them() -> None:
    """The consumer tracks them (a rebalance waits for its pending acks before it commits)."""
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        app = wrapper.stream().app
        channel = wrapper.stream().channel
        plain = wrapper.to_message(None, 0)
        app.topics._acking_topics.add(plain.topic)
        # As the consumer delivers them (the test wrapper's own messages are never tracked).
        message = ConsumerMessage(
            topic=plain.topic, partition=0, offset=0, timestamp=plain.timestamp,
            timestamp_type=0, headers=None, key=None, value=0, checksum=None,
            generation_id=app.consumer_generation_id)
        message.incref()
        await channel.put(await channel.decode(message))
        await until(lambda: batches, "the batch")
        assert message.tracked
        assert message in app.consumer._unacked_messages
        assert not message.acked
        gate.set()
        await until(lambda: message.acked, "the event acked after the body")
        assert message not in app.consumer._unacked_messages

    run_agent(10, 0.001, scenario)


def test_processors_of_the_stream_see_every_event() -> None:
    """faust's agent test wrapper counts processed values through a stream processor: its
    ``put(wait=True)`` returns once the agent took the event."""
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        gate.set()
        await asyncio.wait_for(wrapper.put(7), 5.0)  # returns once processed
        await asyncio.wait_for(wrapper.put(8), 5.0)
        await until(lambda: batches == [[7], [8]], "both events")

    run_agent(10, 0.001, scenario)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        take_batches(object(), 0, 0.01)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        take_batches(object(), 10, 0.0)  # type: ignore[arg-type]


# -- straight from the consumer: DirectQueue ---------------------------------------------------
T0, T1 = TP("t", 0), TP("t", 1)


class Gate:
    """Holds the agent body on each batch until the test lets it go: :meth:`step` lets one
    batch's body finish, :meth:`open` every body from then on."""

    def __init__(self) -> None:
        self._permits = asyncio.Semaphore(0)
        self._open = False

    def step(self) -> None:
        self._permits.release()

    def open(self) -> None:
        self._open = True
        self._permits.release()

    async def wait(self) -> None:
        if not self._open:
            await self._permits.acquire()


class Recorder(faust.Sensor):
    """faust's sensor hooks as the consumer (message in: tracked) and the stream (message out:
    acked) call them."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int]] = []

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        self.log.append(("in", offset))

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        self.log.append(("out", offset))


def consumer_message(offset: int, *, topic: str = "t", partition: int = 0,
                     generation: int = 0, tp: Any = None) -> ConsumerMessage:
    """A message as faust's aiokafka consumer makes it of a fetched record (value: the
    offset)."""
    return ConsumerMessage(topic=topic, partition=partition, offset=offset, timestamp=0.0,
                           timestamp_type=0, headers=None, key=None, value=offset,
                           checksum=None, tp=tp, generation_id=generation)


@dataclass
class Direct:
    """One agent reading topic ``t`` with take_batches, its messages delivered straight: a
    real faust app, its real (never started) aiokafka consumer with a DirectQueue for ``t``
    set by hand, and the agent started by faust's test wrapper on the topic itself (no
    broker). The body records each batch and what held while it had it, then waits at
    :attr:`gate`."""

    app: faust.App
    consumer: Any
    direct: DirectQueue
    gate: Gate = field(default_factory=Gate)
    batches: list[list[int]] = field(default_factory=list)
    in_body: list[dict[str, list[bool]]] = field(default_factory=list)
    sensor: Recorder | None = None
    wrapper: Any = None

    def put(self, *offsets: int, **kwargs: Any) -> list[ConsumerMessage]:
        """Messages of ``offsets`` (current generation) put as the consumer does."""
        kwargs.setdefault("generation", self.app.consumer_generation_id)
        sent = [consumer_message(offset, **kwargs) for offset in offsets]
        for message in sent:
            assert self.direct.put(message)
        return sent

    def taken(self) -> int:
        return sum(map(len, self.batches))

    def acked(self) -> list[int]:
        return list(self.consumer._acked.get(T0, []))


def run_direct(max_: int, within: float, scenario: Callable[[Direct], Awaitable[None]], *,
               maxsize: int = 100, acking: bool = True) -> Direct:
    app = faust.App("batching-direct-unit", broker="kafka://127.0.0.1:9", store="memory://")
    topic = app.topic("t", schema=WireSchema())
    consumer = app.consumer
    d = Direct(app, consumer, DirectQueue(consumer, app.flow_control, maxsize))
    consumer.direct_routes = {"t": d.direct}
    if acking:  # as faust's conductor marks the topics its channels ack; here before the
        app.topics._acking_topics.add("t")  # agent starts (see the last test)

    @app.agent(topic)
    async def agent(stream: Any) -> None:
        async for messages in take_batches(stream, max_, within):
            d.batches.append([m.value for m in messages])
            d.in_body.append({"acked": [m.acked for m in messages],
                              "pending": [m in consumer._unacked_messages for m in messages]})
            await d.gate.wait()

    async def main() -> None:
        d.sensor = Recorder()
        app.sensors.add(d.sensor)
        async with agent.test_context(channel=topic) as wrapper:
            d.wrapper = wrapper
            await scenario(d)
            d.gate.open()

    asyncio.run(asyncio.wait_for(main(), 10.0))
    return d


def test_direct_batches_of_at_most_max_in_order_pending_while_the_body_has_them() -> None:
    """Messages are tracked (pending acks, faust's message-in sensor) when taken, acked (the
    consumer's acked offsets, the message-out sensor) only once the body is done."""
    sent: list[ConsumerMessage] = []

    async def scenario(d: Direct) -> None:
        sent.extend(d.put(*range(7)))
        await until(lambda: d.batches, "the first batch")
        assert d.batches == [[0, 1, 2]]
        assert d.acked() == [] and not any(m.acked for m in sent)
        assert set(d.consumer._unacked_messages) == set(sent[:3])
        d.gate.open()
        await until(lambda: all(m.acked for m in sent), "every message acked")
        assert not d.consumer._unacked_messages

    d = run_direct(3, 0.05, scenario)
    assert d.batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert d.in_body == [{"acked": [False] * n, "pending": [True] * n} for n in (3, 3, 1)]
    assert d.acked() == list(range(7))
    assert d.sensor is not None and d.sensor.log == [
        ("in", 0), ("in", 1), ("in", 2), ("out", 0), ("out", 1), ("out", 2),
        ("in", 3), ("in", 4), ("in", 5), ("out", 3), ("out", 4), ("out", 5),
        ("in", 6), ("out", 6)]


def test_direct_messages_of_a_topic_without_acks_are_not_tracked_but_acked() -> None:
    async def scenario(d: Direct) -> None:
        (message,) = d.put(0)
        await until(lambda: d.batches, "the batch")
        assert not message.tracked and message not in d.consumer._unacked_messages
        d.gate.step()
        await until(lambda: message.acked, "the message acked after the body")

    d = run_direct(10, 0.001, scenario, acking=False)
    assert d.acked() == [] and d.sensor is not None and d.sensor.log == []


def test_direct_messages_that_come_while_the_body_has_a_batch_form_the_next() -> None:
    async def scenario(d: Direct) -> None:
        (first,) = d.put(0)
        await until(lambda: d.batches, "the first batch")
        later = d.put(1, 2)
        await quiescent()
        assert d.batches == [[0]]  # not added to the batch the body has
        assert list(d.direct.messages) == later
        assert not first.acked
        d.gate.step()
        await until(lambda: len(d.batches) == 2, "the second batch")
        assert first.acked and not any(m.acked for m in later)

    assert run_direct(10, 0.01, scenario).batches == [[0], [1, 2]]


def test_direct_an_idle_agent_waits_on_no_timer_and_wakes_on_a_put() -> None:
    """Idle, the agent's task waits on its queue, on no timer at all (``take_events`` has one
    due within ``within``); a put wakes it, and it lingers (on a timer: the check below sees
    timers) before taking the batch."""
    async def scenario(d: Direct) -> None:
        loop: Any = asyncio.get_running_loop()
        (actor,) = d.wrapper._actors
        task = actor.actor_task

        def on_a_timer() -> bool:
            waiting = task._fut_waiter
            return any(h._args and h._args[0] is waiting for h in loop._scheduled)

        def waiting_on_the_queue() -> bool:
            return d.direct._waiter is not None and not d.direct._waiter.done()

        d.gate.open()
        await until(waiting_on_the_queue, "the agent waiting on its queue")
        await quiescent()  # the agent has done all it does without a message
        assert d.batches == [] and task._fut_waiter is not None and not on_a_timer()
        d.put(5)
        await until(on_a_timer, "the agent lingering after the put")
        await until(lambda: d.batches == [[5]], "the message")
        await until(waiting_on_the_queue, "the agent idle again")
        await quiescent()
        assert not on_a_timer()

    run_direct(10, 0.2, scenario)


def test_direct_a_full_batch_waiting_is_taken_without_lingering() -> None:
    async def scenario(d: Direct) -> None:
        d.gate.open()
        d.put(0, 1, 2, 3)
        # A linger of an hour would stall the first batch; none is taken for it.
        await until(lambda: d.batches[:2] == [[0, 1], [2, 3]], "two full batches", 5.0)

    run_direct(2, 3600.0, scenario)


def test_direct_messages_of_an_older_generation_or_taken_while_flow_is_suspended_are_dropped(
) -> None:
    """As faust's stream iterator: never reach the body, are neither tracked nor acked (their
    partition is fetched again from its committed offset)."""
    async def scenario(d: Direct) -> None:
        d.put(0)
        await until(lambda: d.batches, "the first batch")  # the body holds it
        (stale,) = d.put(1)
        d.app.consumer_generation_id += 1  # a rebalance while message 1 waits
        (fresh,) = d.put(2)
        d.gate.step()
        await until(lambda: len(d.batches) == 2, "the next batch")
        assert d.batches[1] == [2]

        (suspended,) = d.put(3)
        d.app.flow_control.suspend()  # a rebalance begins while message 3 waits
        d.gate.step()
        await until(lambda: not d.direct.messages, "message 3 taken")
        await quiescent()
        assert len(d.batches) == 2
        d.app.flow_control.resume()
        (after,) = d.put(4)
        d.gate.step()
        await until(lambda: after.acked, "message 4 taken and acked")
        for message in (stale, suspended):
            assert not message.acked and not message.tracked
            assert message not in d.consumer._unacked_messages
        assert fresh.acked

    d = run_direct(10, 0.001, scenario)
    assert d.batches == [[0], [2], [4]]
    assert d.acked() == [0, 2, 4]


def test_direct_pressure_pauses_the_partition_at_maxsize_and_resumes_it_at_40_percent(
) -> None:
    """The ``maxsize``-th message waiting stops its partition being fetched (faust's
    ``Consumer.on_buffer_full`` with faust's TP: the consumer's active partitions must hold
    no aiokafka TopicPartition, which is what the fetched messages carry); the agent taking
    the queue down to 40 % of ``maxsize`` fetches it again (``on_buffer_drop``). The queue
    does not block: messages already fetched are still appended past ``maxsize``."""
    calls: list[tuple[str, Any]] = []

    async def scenario(d: Direct) -> None:
        consumer = d.consumer
        consumer._active_partitions = {T0, T1}  # as after an assignment
        full, drop = consumer.on_buffer_full, consumer.on_buffer_drop

        def on_buffer_full(tp: Any) -> None:
            calls.append(("full", tp))
            full(tp)

        def on_buffer_drop(tp: Any) -> None:
            calls.append(("drop", tp))
            drop(tp)

        consumer.on_buffer_full, consumer.on_buffer_drop = on_buffer_full, on_buffer_drop
        fetched = TopicPartition("t", 0)  # the tp of a message faust's consumer made
        d.put(0, tp=fetched)
        await until(lambda: d.batches, "the first batch")  # the body holds it
        d.put(1, 2, 3, 4, tp=fetched)
        assert calls == [] and T0 in consumer._active_partitions
        d.put(5, tp=fetched)  # the 5th waiting: maxsize
        assert calls == [("full", T0)] and type(calls[0][1]) is TP
        assert T0 not in consumer._active_partitions and T0 in consumer._buffered_partitions
        assert T1 in consumer._active_partitions
        d.put(6, tp=fetched)  # fetched before the pause took effect: appended, no second call
        assert calls == [("full", T0)] and len(d.direct.messages) == 6
        d.gate.step()  # the agent takes [1, 2]: 4 left, above 40 % of 5
        await until(lambda: len(d.batches) == 2, "the second batch")
        assert calls == [("full", T0)] and T0 not in consumer._active_partitions
        d.gate.step()  # the agent takes [3, 4]: 2 left, 40 % of 5
        await until(lambda: len(d.batches) == 3, "the third batch")
        assert calls == [("full", T0), ("drop", T0)] and type(calls[1][1]) is TP
        assert T0 in consumer._active_partitions and T0 not in consumer._buffered_partitions
        assert consumer._get_active_partitions() == {T0, T1}  # faust asserts they are TPs
        d.gate.open()
        await until(lambda: d.taken() == 7, "every message taken")

    d = run_direct(2, 0.01, scenario, maxsize=5)
    assert d.batches == [[0], [1, 2], [3, 4], [5, 6]]
    assert calls == [("full", T0), ("drop", T0)]


def test_direct_flow_control_resuming_empties_the_queue_and_forgets_paused_partitions(
) -> None:
    """As faust clears the channel queues when flow resumes after a rebalance (their messages
    are fetched again from the committed offsets): what waited is never taken nor acked. A
    partition it had paused is no longer buffered, and not made active either: the consumer
    sets its active partitions from the new assignment (a drop here re-activated partitions
    the rebalance had just paused)."""
    async def scenario(d: Direct) -> None:
        consumer = d.consumer
        consumer._active_partitions = {T0}
        d.put(0)
        await until(lambda: d.batches, "the first batch")  # the body holds it
        waiting = d.put(1, 2, 3)  # maxsize: the partition paused
        assert T0 not in consumer._active_partitions
        d.app.flow_control.suspend()  # a rebalance ...
        d.app.flow_control.resume()  # ... over
        assert not d.direct.messages
        assert T0 not in consumer._active_partitions and T0 not in consumer._buffered_partitions
        (after,) = d.put(4)
        d.gate.open()
        await until(lambda: after.acked, "the message put after the resume")
        assert not any(m.acked or m.tracked for m in waiting)

    d = run_direct(1, 0.001, scenario, maxsize=3)
    assert d.batches == [[0], [4]]
    assert d.acked() == [0, 4]


# The delivery of a message of a direct topic while flow control is suspended, through stock
# faust's delivery line and a stand-in conductor (it awaits flow control, then puts the message
# on a channel queue that flow control clears when it resumes), or through
# FastConsumer._deliver and a DirectQueue; then, per scenario:
#   resumed: flow control resumes (as at the end of recovery; suspend_flow was never set, as
#     at start-up),
#   rebalance: the consumer's suspend_flow is set (stop_flow: a rebalance begins),
#   suspended_flow: suspend_flow was set before the delivery,
#   resumed_and_suspended: flow control resumes and a rebalance begins at once (no turn of
#     the loop between).
# Message 0, queued before the suspension, waits on the queue throughout: a resume clears it.
# Then flow control resumes (again): a delivery that was dropped must not come back then.
FLOW_EXPECTED = {
    # name: (the delivery returned, what is queued once it is over, and after a later resume)
    "resumed": (True, [1], []),  # 0 cleared by the resume, then the blocked message put
    "rebalance": (True, [0], []),  # the blocked delivery ends, its message dropped: no 1 put
    "suspended_flow": (True, [0], []),  # after the later resume either
    "resumed_and_suspended": (True, [], []),
}
#: Where stock faust differs: its conductor, woken by the resume, puts the message although
#: flow control is suspended again by the time it runs (faust's stream iterator drops it, the
#: next resume clears it); the DirectQueue asks again and waits, and the race drops it.
STOCK_DIFFERS = {"resumed_and_suspended": (True, [1], [])}


async def flow_scenario(name: str, path: str) -> tuple[bool, list[int], list[int]]:
    flow_control = FlowControlEvent()  # initially suspended, as the app's
    consumer = FakeConsumer()
    queued: Callable[[], list[int]]
    if path == "stock":
        queue: FlowControlQueue[Any] = FlowControlQueue(flow_control=flow_control,
                                                        clear_on_resume=True)

        async def conductor(message: Any) -> None:
            await flow_control.acquire()
            queue.put_nowait(message)

        callback: Callable[[Any], Awaitable[None]] = conductor
        queued = lambda: [m.offset for m in queue._queue]  # noqa: E731
        deliver = consumer.deliver_stock
    else:
        direct = DirectQueue(consumer, flow_control, 100)
        direct.reader = object()  # an agent takes batches from it
        consumer.direct_routes = {"t": direct}

        async def not_called(message: Any) -> None:
            raise AssertionError("a direct topic's message went to the conductor")

        callback = not_called
        queued = lambda: [m.offset for m in direct.messages]  # noqa: E731
        deliver = consumer.deliver_fast
    flow_control.resume()
    await deliver(callback, consumer_message(0))  # queued before the suspension
    flow_control.suspend()
    if name == "suspended_flow":
        consumer.suspend_flow.set()
    task = asyncio.ensure_future(deliver(callback, consumer_message(1)))
    await quiescent()  # the delivery has run as far as it can
    if name == "resumed":
        flow_control.resume()
    elif name == "rebalance":
        consumer.suspend_flow.set()
    elif name == "resumed_and_suspended":
        flow_control.resume()
        flow_control.suspend()
        consumer.suspend_flow.set()
    done, _ = await asyncio.wait([task], timeout=2)
    returned = task in done and task.exception() is None
    if not returned:
        task.cancel()
    await quiescent()
    over = queued()
    consumer.suspend_flow.clear()
    flow_control.resume()
    await quiescent()
    return returned, over, queued()


@pytest.mark.parametrize("name", list(FLOW_EXPECTED))
def test_a_direct_delivery_while_flow_is_suspended_behaves_as_stock_faust(name: str) -> None:
    stock = asyncio.run(flow_scenario(name, "stock"))
    direct = asyncio.run(flow_scenario(name, "direct"))
    assert direct == FLOW_EXPECTED[name]
    assert stock == STOCK_DIFFERS.get(name, FLOW_EXPECTED[name])


def test_direct_put_refuses_a_message_while_flow_control_is_suspended() -> None:
    app = faust.App("batching-direct-unit", broker="kafka://127.0.0.1:9", store="memory://")
    direct = DirectQueue(app.consumer, app.flow_control, 10)  # flow control starts suspended
    message = consumer_message(0)
    assert not direct.put(message)
    assert not direct.messages and message.refcount == 0
    app.flow_control.resume()
    assert direct.put(message)
    assert list(direct.messages) == [message] and message.refcount == 1


def test_deliver_puts_a_direct_topics_message_on_its_queue_without_the_callback() -> None:
    """In the delivery's first step (no task, no turn of the loop), once an agent reads the
    queue (before that, through the callback: the conductor puts it on the agent's channel);
    other topics' messages still go through the callback."""
    async def main() -> None:
        consumer = FakeConsumer()
        direct = DirectQueue(consumer, FlowControlEvent(initially_suspended=False), 10)
        consumer.direct_routes = {"t": direct}
        called: list[Any] = []

        async def callback(message: Any) -> None:
            called.append(message)

        early = consumer_message(0)
        await consumer.deliver_fast(callback, early)  # no agent reads the queue yet
        assert called == [early] and not direct.messages
        called.clear()
        direct.reader = object()  # take_batches reads it now
        message, other = consumer_message(0), consumer_message(0, topic="u")
        delivery = consumer.deliver_fast(callback, message)
        with pytest.raises(StopIteration):
            delivery.send(None)  # done without suspending
        assert list(direct.messages) == [message] and message.refcount == 1
        assert called == []
        await consumer.deliver_fast(callback, other)
        assert called == [other] and list(direct.messages) == [message]

    asyncio.run(main())


@pytest.mark.parametrize("other", [("t",), ("t", "u")])
def test_take_batches_refuses_a_direct_topic_another_channel_reads(other: tuple[str, ...],
                                                                   ) -> None:
    app = faust.App("batching-direct-unit", broker="kafka://127.0.0.1:9", store="memory://")
    app.consumer.direct_routes = {"t": DirectQueue(app.consumer, app.flow_control, 10)}
    stream = app.stream(app.topic("t", schema=WireSchema()))
    batches: Any = take_batches(stream, 10, 0.01)  # the only channel reading t: direct
    assert batches.ag_code.co_name == "_take_direct"
    app.stream(app.topic(*other))  # e.g. a second agent reading t
    with pytest.raises(RuntimeError, match="'t' is delivered straight to one agent, but 1 more"):
        take_batches(stream, 10, 0.01)


def test_direct_messages_are_tracked_when_the_conductor_marks_the_topic_after_agents_start(
) -> None:
    """faust starts the agents first (``app.agents``), and its conductor fills its acking
    topics (``_update_indices``) only once they have started (``Conductor._subscriber`` waits
    for ``wait_until_agents_started``). Here faust's own AgentManager and Conductor are started
    in that order, the consumer's subscribe stubbed: the direct loop must still track the
    topic's messages (pending acks that a rebalance's ``Consumer.wait_empty`` waits for), as
    the channel path and faust's stream iterator do (they test membership per event)."""
    app = faust.App("batching-direct-unit", broker="kafka://127.0.0.1:9", store="memory://")
    topic = app.topic("t", schema=WireSchema())
    consumer = app.consumer
    direct = DirectQueue(consumer, app.flow_control, 10)
    consumer.direct_routes = {"t": direct}
    acking_at_start: list[bool] = []
    pending_in_body: list[bool] = []

    @app.agent(topic)
    async def agent(stream: Any) -> None:
        acking_at_start.append(app.topics.acks_enabled_for("t"))
        async for messages in take_batches(stream, 10, 0.001):
            pending_in_body.extend(m in consumer._unacked_messages for m in messages)

    async def subscribe(topics: Any) -> None:
        pass

    consumer.subscribe = subscribe  # type: ignore[method-assign]

    async def main() -> None:
        app.tables._tables_registered.set()  # no tables
        await app.agents.start()
        await app.topics.start()
        try:
            await asyncio.wait_for(app.topics.wait_for_subscriptions(), 5.0)
            assert acking_at_start == [False] and app.topics.acks_enabled_for("t")
            app.flow_control.resume()
            assert direct.put(consumer_message(0, generation=app.consumer_generation_id))
            await until(lambda: pending_in_body, "the batch")
        finally:
            await app.topics.stop()
            await app.agents.stop()

    asyncio.run(asyncio.wait_for(main(), 10.0))
    assert pending_in_body == [True]


def test_direct_messages_on_the_channel_come_first_and_stopping_the_agent_ends_the_loop(
) -> None:
    """Messages the conductor put on the agent's channel (delivered before the agent read the
    queue) are taken before those handed over since, in one batch up to ``max_``; the agent
    reads the queue while its loop runs, and stopping the agent (faust throws
    StopAsyncIteration into its channel, then cancels its task) ends the loop without a hang:
    the queue has no reader any more, and the loop left no waiter on the channel's queue."""
    app = faust.App("batching-direct-unit", broker="kafka://127.0.0.1:9", store="memory://")
    topic = app.topic("t", schema=WireSchema())
    consumer = app.consumer
    direct = DirectQueue(consumer, app.flow_control, 100)
    consumer.direct_routes = {"t": direct}
    batches: list[list[int]] = []
    readers: list[Any] = []

    @app.agent(topic)
    async def agent(stream: Any) -> None:
        async for messages in take_batches(stream, 3, 0.001):
            readers.append(direct.reader)
            batches.append([m.value for m in messages])

    async def main() -> None:
        async with agent.test_context(channel=topic) as wrapper:
            channel = wrapper.stream().channel
            await until(lambda: direct.reader is channel, "the agent reading the queue")
            await quiescent()  # idle, waiting for either
            # The conductor's puts of messages delivered before (here: just now), then one
            # handed over since, with no turn of the loop between.
            for offset in (0, 1, 2, 3):
                channel.queue.put_nowait(await channel.decode(consumer_message(offset)))
            assert direct.put(consumer_message(4))
            await until(lambda: sum(map(len, batches)) == 5, "all five messages")
            (actor,) = wrapper._actors
            task = actor.actor_task
        # test_context stopped the agent: its loop ended, nothing of it left waiting.
        assert task.done() and direct.reader is None
        assert [g for g in channel.queue._getters if not g.done()] == []

    asyncio.run(asyncio.wait_for(main(), 10.0))
    assert batches == [[0, 1, 2], [3, 4]]
    assert readers and all(r is not None for r in readers)
