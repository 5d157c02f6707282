"""Crash recovery (issue 6): workers SIGKILLed at seeded random points and restarted end in
the state of a run that never stopped, co-purchase state and reward ledger alike.

Runs the crash harness (``tests/crash_harness.py``, which ``python -m tests.crash_harness``
runs at larger scale) on the session broker, with fresh topics and group per test:

- one worker, 150 orders (with their sessions' offer impressions and clicks) per trial, killed
  once per trial for four trials, the co-purchase state (``item-counts`` included) compared
  after each; then every impression is closed, the worker killed a fifth time while it
  publishes the outcomes, and the outcomes on ``feedback`` and the ledger's windows and totals
  per policy version compared. Kills 1, 3 and 5 are torn write-backs (the worker kills itself
  after a seeded part of a write-back's changelog topics reached the broker, before the rest
  and the offset commit), 2 and 4 at a polled count of purchases consumed;
- two workers on four partitions: B killed mid-chunk in a torn write-back (A takes its
  partitions over), B back, A killed mid-chunk at a polled count, A back; then the impressions
  closed with B killed while publishing.

Every wait is for a condition with a deadline (committed offsets at the end offsets, a worker
ready, a number of events consumed, a worker gone); nothing sleeps to synchronise. About 130 s
together (60 + 70 on two cores): each kill costs a restart and a rejoin of the group.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamer.app.broker import EmbeddedBroker
from streamer.app.worker import ensure_topics
from streamer.settings import Settings
from tests.crash_harness import (
    Trial,
    fresh_settings,
    run_rebalance_trials,
    run_single_worker_trials,
)

pytestmark = pytest.mark.integration

ORDERS = 150


def crash_settings(broker: EmbeddedBroker, workdir: Path) -> Settings:
    settings = fresh_settings(broker.bootstrap, workdir, partitions=4)
    asyncio.run(ensure_topics(settings))
    return settings


def assert_all_equal(trials: list[Trial], expected: int) -> None:
    for trial in trials:
        print(trial.line())
    assert len(trials) == expected
    assert trials[-1].ledger is not None, "the ledger was not compared"
    # Torn kills are at the first write-back, which every chunk has: one that tore nothing
    # means the hook no longer reaches the sender.
    torn = [t.torn for t in trials if t.torn]
    assert torn and all(how.startswith("torn write-back #") for how in torn), torn
    bad = [trial.line() for trial in trials if not trial.equal]
    assert not bad, "states or ledgers differ from the uninterrupted run:\n" + "\n".join(bad)


def test_a_worker_killed_five_times_ends_as_if_it_never_stopped(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = crash_settings(broker, tmp_path)
    trials = run_single_worker_trials(settings, tmp_path, trials=4, orders_per=ORDERS, seed=11,
                                      timeout_s=60)
    assert_all_equal(trials, expected=5)  # four kills in chunks, one while closing


def test_two_workers_killed_in_turn_end_as_if_they_never_stopped(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = crash_settings(broker, tmp_path)
    trials = run_rebalance_trials(settings, tmp_path, orders_per=ORDERS, seed=12, timeout_s=90)
    assert_all_equal(trials, expected=3)  # B, then A mid-chunk; B while closing
