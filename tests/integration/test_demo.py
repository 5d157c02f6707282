"""The demo itself, shortened: offers are published, the worker and the trainer stop cleanly,
and nothing is left running afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def figure(text: str, pattern: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the demo's output:\n{text[-3000:]}"
    return int(match.group(1).replace(",", ""))


def processes_with_marker(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if marker.encode() in environ:
            found.append(int(entry.name))
    return found


def test_demo_publishes_offers_and_cleans_up() -> None:
    marker = f"STREAMER_TEST_MARKER={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "COLUMNS": "120"}
    result = subprocess.run(
        [sys.executable, "-m", "streamer", "demo", "--duration", "15", "--no-live"],
        env=env, capture_output=True, text=True, timeout=150,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    offers = figure(out, r"offers published: ([\d,]+)")
    malformed = figure(out, r"\(\+([\d,]+) malformed on purpose\)")
    dead = figure(out, r"dead letters: ([\d,]+)")
    consumed = [int(n.replace(",", "")) for n in re.findall(r"consumed from \S+: ([\d,]+)", out)]
    assert offers > 0
    assert sum(consumed) > 100
    assert dead == malformed  # every broken message the storefront sent was dead-lettered
    # The worker and the trainer shut down on SIGTERM by themselves (a kill after the grace
    # period exits -9).
    # (streamer.app.demo.stopped: "stopped" alone is exit code 0).
    assert re.search(r"^worker stopped$", out, re.MULTILINE), out[-3000:]
    assert re.search(r"^trainer stopped$", out, re.MULTILINE), out[-3000:]
    assert re.search(r"policy versions adopted: \d+", out), out[-3000:]
    # What the trainer's gate made of its candidates, read from the trainer's /metrics.
    assert re.search(r"trainer candidates: \d+ judged, \d+ promoted, \d+ rejected", out), (
        out[-3000:])
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 3, out  # broker, worker and trainer
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text(), f"process {pid} outlived the demo"
    assert processes_with_marker(marker.split("=")[1]) == []
