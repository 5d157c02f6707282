"""streamer.app.batching.take_batches: faust's take_events semantics (batches of at most max_,
acks after the body) taken straight off the channel queue, with what faust's stream iterator
does per event kept (generation check, pending-ack tracking, processors, end of channel) and
no wake-up while idle."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.types.tuples import ConsumerMessage

from streamer.app.batching import take_batches
from tests.conftest import quiescent, until


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

        await until(lambda: queue._getters, "the agent waiting on its queue")
        await quiescent()  # the agent has done all it does without an event
        assert batches == []
        assert not [h for h in loop._scheduled if "_take_batches" in repr(h)]
        gate.set()
        await wrapper.put(5, wait=False)
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
