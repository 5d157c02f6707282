"""Crash consistency on the real broker: workers killed with SIGKILL at seeded random points
and restarted (same app id: tables recover from their changelogs) end in the co-purchase state
of an uninterrupted run, exactly: nothing lost, nothing counted twice.

The harness (events, reference, kill points, "settled", comparison) is ``tests/crash_harness``;
``python -m tests.crash_harness --trials 20`` runs more trials than this test. The 2-worker
rebalance scenario (``--rebalance``) is not part of the suite yet: on the embedded broker it
still loses a few increments after a rebalance (issue 6; Tansu answers ListOffsets(latest) with
the last batch's base offset + 1, which cuts changelog recovery short).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamer.app.worker import ensure_topics
from streamer.settings import Settings
from tests.crash_harness import Trial, run_single_worker_trials

pytestmark = pytest.mark.integration

ORDERS_PER_TRIAL = 300  # ~1,500 (event, anchor) baskets each, 2-6 items per order


def report(trials: list[Trial]) -> str:
    return "\n".join(t.line() for t in trials)


def test_killed_and_restarted_worker_ends_in_the_uninterrupted_state(
    settings: Settings, tmp_path: Path
) -> None:
    # The harness starts (and SIGKILLs) its own worker processes, and stops them at the end.
    asyncio.run(ensure_topics(settings))
    trials = run_single_worker_trials(settings, tmp_path, trials=5,
                                      orders_per=ORDERS_PER_TRIAL, seed=20240611,
                                      on_trial=lambda t: print(t.line()))
    assert len(trials) == 5
    assert all(t.diff.equal for t in trials), report(trials)

