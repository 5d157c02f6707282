"""The read-only commands against a broker no worker has run on: the topics they read do not
exist yet, which is a step to take, not a crash (it was a 70-line traceback)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from streamer.settings import Settings
from tests.conftest import consume, ensure_topics, produce, settings_env


def streamer(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamer", *args],
                          env=settings_env(settings) | {"COLUMNS": "400"},
                          capture_output=True, text=True, timeout=120)


def test_a_missing_topic_is_one_line_naming_it_and_the_step_to_take(
        settings: Settings, tmp_path: Path) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    t = settings.topics
    for args, topic in ((["rewards"], t.rewards),
                        (["report", "-o", f"{tmp_path}/r.html"], t.rewards),
                        (["policy", "rollback", "v0-greedy"], t.policy_updates)):
        result = streamer(settings, *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.strip() == (
            f"no topic {topic} at {bootstrap}: start `streamer worker` against it first (it "
            "creates streamer's topics)"), result.stdout + result.stderr
    listed = streamer(settings, "policy", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert (f"no topic {t.policy_updates} at {bootstrap} yet: nothing was published, v0-greedy "
            "is live") in listed.stdout
    assert "* " in listed.stdout and "v0-greedy" in listed.stdout  # the table: v0, live


def test_a_rollback_to_the_live_version_publishes_nothing(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))
    result = streamer(settings, "policy", "rollback", "v0-greedy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "v0-greedy is live already: nothing changes, nothing published" in result.stdout

    # Then a marker: what is read up to it is what the topic held (no end offsets: the
    # embedded broker under-reports them).
    produce(settings, settings.topics.policy_updates, [(b"policy", b"marker")])
    records = consume(settings, settings.topics.policy_updates,
                      lambda got: any(r.value == b"marker" for r in got))
    assert [r.value for r in records] == [b"marker"]  # history, kept forever, unchanged
