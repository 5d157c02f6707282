"""streamer.app.batching.take_batches: faust's take_events semantics (batches of at most max_,
acks after the body) without waking while idle."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from streamer.app.batching import take_batches
from tests.conftest import quiescent, until


def run_agent(max_: int, within: float, scenario: Any) -> list[list[int]]:
    app = faust.App("batching-unit", broker="kafka://127.0.0.1:9", store="memory://")
    batches: list[list[int]] = []
    acked_in_body: list[bool] = []
    gate = asyncio.Event()

    @app.agent()
    async def agent(stream: Any) -> None:
        async for events in take_batches(stream, max_, within):
            batches.append([e.value for e in events])
            acked_in_body.append(any(e.message.acked for e in events))
            await gate.wait()

    async def main() -> None:
        async with agent.test_context() as wrapper:
            await scenario(wrapper, batches, gate)
        assert not any(acked_in_body), "events are acked only once the body is done"

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
    """No event, no wake-up: the idle agent's only timer is its once-a-second stop check,
    the same one throughout (take_events wakes every ``within``)."""
    async def scenario(wrapper: Any, batches: list[list[int]], gate: asyncio.Event) -> None:
        loop: Any = asyncio.get_running_loop()

        def timers() -> list[Any]:
            return [h for h in loop._scheduled if "_take_batches" in repr(h)]

        await until(timers, "the agent waiting")
        await quiescent()  # the agent has done all it does without an event
        # Its one timer is the stop check, due in about a second: nothing wakes it before
        # (take_events would have a timer due within 5 ms, and again after each wake).
        before = timers()
        assert batches == []
        assert len(before) == 1 and before[0].when() - loop.time() > 0.5
        gate.set()
        await wrapper.put(5, wait=False)
        await until(lambda: batches == [[5]], "the event")

    run_agent(10, 0.005, scenario)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        take_batches(object(), 0, 0.01)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        take_batches(object(), 10, 0.0)  # type: ignore[arg-type]
