"""An agent that raises (a bug: input never makes one raise) stops its worker, which commits
nothing more and exits with status 1; restarted, the worker learns every purchase exactly
once, the crashed agent's batch included (``streamer.app.crashes``). A timer that raises stops
the worker with status 1 too (mode crashes the app; a timer holds no consumed events).

The bugs are the tests': the crashing worker's interpreter imports a ``sitecustomize`` that
makes ``Engine.learn_baskets`` raise on baskets of the item ``bug``, or the reward ticks'
timer raise (nothing in the product provokes crashes); the restarted worker runs without it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.app.demo import WorkerProcess
from streamer.settings import Settings
from tests.conftest import (
    RunningWorker,
    item_view,
    produce,
    settings_env,
    uncommitted,
    wait_for,
)
from tests.integration.test_pipeline import as_messages, purchase

pytestmark = pytest.mark.integration

BUG = '''
import streamer.engine

_learn_baskets = streamer.engine.Engine.learn_baskets


def learn_baskets(self, baskets):
    if any(b.anchor == "bug" for b in baskets):
        raise RuntimeError("a bug, provoked by the test")
    return _learn_baskets(self, baskets)


streamer.engine.Engine.learn_baskets = learn_baskets
'''

TIMER_BUG = '''
import streamer.app.rewards_agents

_update_lag = streamer.app.rewards_agents.update_lag
_calls = [0]


def update_lag(app, metrics):  # called by the reward ticks' timer
    _calls[0] += 1
    if _calls[0] >= 3:
        raise RuntimeError("a timer bug, provoked by the test")
    return _update_lag(app, metrics)


streamer.app.rewards_agents.update_lag = update_lag
'''


def buggy_worker(settings: Settings, tmp_path: Path, bug: str) -> WorkerProcess:
    """A ``streamer worker`` whose interpreter imports ``bug`` first (a ``sitecustomize``)."""
    bug_dir = tmp_path / "bug"
    bug_dir.mkdir()
    (bug_dir / "sitecustomize.py").write_text(bug)
    env = settings_env(settings)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(bug_dir), env.get("PYTHONPATH")) if p)
    return WorkerProcess(env, tmp_path / "buggy-worker.log")


def test_an_agent_crash_stops_the_worker_and_its_restart_loses_nothing(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    t = settings.topics
    buggy = buggy_worker(settings, tmp_path, BUG)
    now = int(time.time() * 1000)
    first = [purchase(n, ["tea", "cup"], ts=now) for n in range(20)]
    crash = purchase(20, ["tea", "bug"], ts=now)
    then = [purchase(21 + n, ["tea", "cup"], ts=now) for n in range(20)]
    try:
        worker = RunningWorker(buggy, settings)
        wait_for(lambda: buggy.proc.poll() is not None or worker.stats().get("ready"), 30,
                 "the worker to be ready")
        produce(settings, t.purchases, as_messages(first))
        wait_for(lambda: item_view(worker, "tea")["count"] > 19.9, 30,
                 "the first purchases learned")
        produce(settings, t.purchases, as_messages([crash, *then]))
        wait_for(lambda: buggy.proc.poll() is not None, 60, "the worker to stop on its own")
    finally:
        buggy.stop()
    log = buggy.log_path.read_text(errors="replace")
    assert buggy.proc.returncode == 1, log[-3000:]
    assert re.search(r"agent (purchases|items) crashed: the worker commits nothing more, "
                     r"stops and exits with status 1", log), log[-3000:]
    assert "RuntimeError: a bug, provoked by the test" in log
    # The crashed batch was never committed (learned in place, the purchase is; sent to the
    # items agent, its basket is).
    baskets = f"{settings.worker.app_id}-item-baskets"
    assert uncommitted(settings, t.purchases) or uncommitted(settings, baskets)

    restarted = start_worker()
    wait_for(lambda: item_view(restarted, "tea")["count"] > 40.9, 60,
             "every purchase learned after the restart")
    wait_for(lambda: not uncommitted(settings, t.purchases)
             and not uncommitted(settings, baskets), 60, "everything committed")
    # Exactly once: the purchases learned before the crash were not learned again.
    assert item_view(restarted, "tea")["count"] == pytest.approx(41, rel=1e-4)
    assert item_view(restarted, "cup")["count"] == pytest.approx(40, rel=1e-4)
    assert item_view(restarted, "bug")["count"] == pytest.approx(1, rel=1e-4)


def test_a_timer_that_raises_stops_the_worker(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    buggy = buggy_worker(settings, tmp_path, TIMER_BUG)
    try:
        wait_for(lambda: buggy.proc.poll() is not None, 90, "the worker to stop on its own")
    finally:
        buggy.stop()
    log = buggy.log_path.read_text(errors="replace")
    assert buggy.proc.returncode == 1, log[-3000:]
    assert "Crashed reason=RuntimeError('a timer bug, provoked by the test')" in log
