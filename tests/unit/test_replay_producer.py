"""``replay_events`` against a fake producer: what the summary counts when deliveries fail."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

import streamer.app.replay as replay
from streamer.events import ClickEvent, Event
from streamer.settings import Settings


class FakeProducer:
    """Acknowledges every send but those of ``fail_at`` (a failed delivery) and refuses
    (raises) those of ``raise_at``."""

    def __init__(self, fail_at: set[int] = frozenset(), raise_at: set[int] = frozenset(),
                 unacknowledged_from: int | None = None, ctrl_c_at: int | None = None) -> None:
        self.sends = 0
        self.fail_at, self.raise_at = set(fail_at), set(raise_at)
        self.unacknowledged_from = unacknowledged_from  # deliveries that never complete
        self.ctrl_c_at = ctrl_c_at  # the send during which the user presses Ctrl-C
        self.delivered: list[int] = []

    async def send(self, topic: str, value: bytes, *, key: bytes, timestamp_ms: int) -> Any:
        i, self.sends = self.sends, self.sends + 1
        if i == self.ctrl_c_at:
            signal.raise_signal(signal.SIGINT)  # asyncio.run cancels the replay's task
            await asyncio.Event().wait()
        if i in self.raise_at:
            raise KafkaTimeoutError()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.unacknowledged_from is not None and i >= self.unacknowledged_from:
            return future
        if i in self.fail_at:
            future.set_exception(KafkaTimeoutError())
        else:
            future.set_result(None)
            self.delivered.append(i)
        return future

    async def stop(self) -> None:
        pass


def run(producer: FakeProducer, events: list[Event]) -> replay.ReplaySummary:
    async def started(_: object) -> None:
        pass

    async def prepared(_: object, __: int) -> list[str]:
        return []  # topics: tests/integration/test_replay.py

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replay, "AIOKafkaProducer", lambda **_: producer)
        mp.setattr(replay, "start_client", started)
        mp.setattr(replay, "prepare_topics", prepared)
        return asyncio.run(replay.replay_events(Settings(), events, speed=None))


EVENTS: list[Event] = [ClickEvent(event_id=f"c{i}", ts=1_000 + i, user_id="u",
                                  session_id=f"s{i % 7}", item_id="i", kind="view")
                       for i in range(100)]


def test_a_failed_delivery_is_not_counted_as_sent_and_names_where_to_resume() -> None:
    producer = FakeProducer(fail_at={30, 60})
    summary = run(producer, EVENTS)
    assert summary.events == len(producer.delivered) == 98
    assert summary.errors == 2
    assert (summary.undelivered, summary.undelivered_ts) == (30, EVENTS[30].ts)
    assert "98 events" in summary.text()
    assert "not delivered from event #31 on" in summary.text()


def test_a_refused_send_ends_the_replay_with_its_summary() -> None:
    producer = FakeProducer(raise_at={30})
    summary = run(producer, EVENTS)
    assert producer.sends == 31  # nothing after the refused send
    assert summary.events == 30 and summary.errors == 1
    assert summary.undelivered == 30


def test_a_clean_replay_has_nothing_undelivered() -> None:
    summary = run(FakeProducer(), EVENTS)
    assert summary.events == 100 and summary.errors == 0 and summary.undelivered is None
    assert "not delivered" not in summary.text()


@pytest.mark.parametrize(("unacknowledged_from", "resume_at"), [(None, 60), (40, 40)])
def test_ctrl_c_ends_the_replay_with_its_summary_and_where_to_resume(
        monkeypatch: pytest.MonkeyPatch, unacknowledged_from: int | None, resume_at: int) -> None:
    """Interrupted at the 61st send: what was acknowledged counts (all 60 sent, or the first
    40 when the rest never were), and the replay resumes from the first event that was not;
    the acknowledgements are waited for, briefly. It ended with status 130 and no summary."""
    monkeypatch.setattr(replay, "INTERRUPT_WAIT_S", 0.2)
    producer = FakeProducer(unacknowledged_from=unacknowledged_from, ctrl_c_at=60)
    summary = run(producer, EVENTS)
    assert summary.interrupted and summary.errors == 0
    assert summary.events == resume_at
    assert (summary.undelivered, summary.undelivered_ts) == (resume_at, EVENTS[resume_at].ts)
    assert summary.text().startswith(f"interrupted: {resume_at} events")
