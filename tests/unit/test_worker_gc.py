"""The worker's garbage-collector set-up (streamer.app.worker.tune_gc)."""

from __future__ import annotations

from typing import Any

import pytest

from streamer.app import worker
from streamer.settings import Settings


class FakeGc:
    """Records what tune_gc asks of the collector (the test process's own is left alone)."""

    def __init__(self) -> None:
        self.frozen = False
        self.thresholds = (700, 10, 10)

    def freeze(self) -> None:
        self.frozen = True

    def get_threshold(self) -> tuple[int, int, int]:
        return self.thresholds

    def set_threshold(self, *thresholds: int) -> None:
        self.thresholds = thresholds


@pytest.fixture
def fake_gc(monkeypatch: Any) -> FakeGc:
    fake = FakeGc()
    monkeypatch.setattr(worker, "gc", fake)
    return fake


def test_young_threshold_is_raised_older_ones_kept(fake_gc: FakeGc) -> None:
    worker.tune_gc(Settings().worker)
    assert fake_gc.frozen
    assert fake_gc.thresholds == (500_000, 10, 10)


def test_zero_keeps_pythons_thresholds(fake_gc: FakeGc) -> None:
    worker.tune_gc(Settings(worker={"gc_young_threshold": 0}).worker)
    assert fake_gc.frozen
    assert fake_gc.thresholds == (700, 10, 10)


def test_the_setting_comes_from_the_environment(monkeypatch: Any, fake_gc: FakeGc) -> None:
    monkeypatch.setenv("STREAMER__WORKER__GC_YOUNG_THRESHOLD", "12000")
    worker.tune_gc(Settings().worker)
    assert fake_gc.thresholds == (12_000, 10, 10)


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="gc_young_threshold"):
        Settings(worker={"gc_young_threshold": -1})
