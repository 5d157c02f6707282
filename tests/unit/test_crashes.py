"""An agent's crash: counted, logged, commits refused, the worker stopped (streamer.app.crashes);
a cancellation is not a crash."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import SimpleNamespace
from typing import Any

import pytest

from streamer.app.crashes import AgentCrashes, stop_process
from streamer.observability import Metrics


def crashes_of(metrics: Metrics, refused: list[BaseException],
               stopped: list[tuple[str, BaseException]] | None) -> AgentCrashes:
    crashes = AgentCrashes(metrics, refuse_commits=refused.append)
    if stopped is not None:
        crashes.on_crash = lambda agent, exc: stopped.append((agent, exc))
    return crashes


def test_a_crash_is_counted_refuses_commits_and_stops_the_worker(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics, refused, stopped = Metrics(), [], []  # type: ignore[var-annotated]
    crashes = crashes_of(metrics, refused, stopped)
    bug = ValueError("a bug")

    @crashes.guard("items")
    async def items(stream: Any) -> None:
        raise bug

    with caplog.at_level(logging.ERROR, logger="streamer.app.crashes"):
        assert asyncio.run(items(None)) is None  # returns: faust does not restart the agent
    assert refused == [bug]
    assert stopped == [("items", bug)]
    assert metrics.agent_crashes.labels("items")._value.get() == 1.0
    assert "agent items crashed: the worker commits nothing more, stops" in caplog.text
    assert "ValueError: a bug" in caplog.text  # with its traceback


def test_without_a_stop_the_log_says_nothing_stops_the_worker(
        caplog: pytest.LogCaptureFixture) -> None:
    refused: list[BaseException] = []
    crashes = crashes_of(Metrics(), refused, None)

    @crashes.guard("clicks")
    async def clicks(stream: Any) -> None:
        raise KeyError("x")

    with caplog.at_level(logging.ERROR, logger="streamer.app.crashes"):
        asyncio.run(clicks(None))
    assert len(refused) == 1
    assert "and nothing stops it" in caplog.text


def test_cancellation_and_a_clean_end_are_not_crashes() -> None:
    metrics, refused, stopped = Metrics(), [], []  # type: ignore[var-annotated]
    crashes = crashes_of(metrics, refused, stopped)
    seen = []

    @crashes.guard("purchases")
    async def cancelled(stream: Any) -> None:
        raise asyncio.CancelledError  # a rebalance or a shutdown

    @crashes.guard("purchases")
    async def done(stream: Any) -> None:
        seen.append(stream)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled(None))
    asyncio.run(done("stream"))
    assert seen == ["stream"]
    assert refused == [] and stopped == []
    assert metrics.agent_crashes.labels("purchases")._value.get() == 0.0


def test_stop_process_stops_the_worker_as_on_sigterm_with_the_first_crash_as_reason() -> None:
    worker = SimpleNamespace(crash_reason=None)
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        first, second = RuntimeError("first"), RuntimeError("second")
        stop = stop_process(worker)
        stop("items", first)
        stop("clicks", second)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM, signal.SIGTERM]
    assert worker.crash_reason is first  # mode's worker exits with status 1 on it
