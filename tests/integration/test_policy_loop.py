"""The learning loop on the real broker: feedback in -> the trainer publishes a version ->
the worker adopts it (new offers carry it) -> a rollback returns the worker to the old one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from streamer.app.broker import free_port, stop_process_group
from streamer.app.policy_updates import publish_rollback, read_versions
from streamer.events import EventCodec, OrderLine, PurchaseEvent
from streamer.observability import parse_snapshot
from streamer.online import FEATURE_NAMES
from streamer.settings import Settings, TrainerSettings
from tests.conftest import consume, produce, settings_env, wait_for

pytestmark = pytest.mark.integration

P_CONVERT = np.array([0.05, 0.10, 0.40, 0.10])
VALUE = 10.0


def purchases(tag: str, n: int) -> list[tuple[bytes | None, bytes]]:
    now = int(time.time() * 1000)
    events = [
        PurchaseEvent(event_id=f"{tag}-{k}", ts=now + k, user_id="u", session_id=f"{tag}-{k}",
                      order_id=f"{tag}-{k}",
                      items=[OrderLine(item_id=i, quantity=1, unit_price=4.0)
                             for i in ("tea", "cup", "jam")])
        for k in range(n)
    ]
    return [(e.session_id.encode(), msgspec.json.encode(e)) for e in events]


def feedback(offer_id: str, n: int, seed: int = 0) -> list[tuple[bytes | None, bytes]]:
    """A 4-variant bandit logged uniformly: variant 2 converts far more often. Records carry
    their decision (``variant_features``, ``chosen``, ``expected_rewards``, ``support``: every
    variant, logged uniformly), as the decision ledger may; the offer they belong to is a real
    one the worker published."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        rows = []
        for a in range(4):
            row = dict.fromkeys(FEATURE_NAMES, 0.0)
            row["discount"] = 0.05 * a
            row["confidence"] = float(a == 2)
            row["score"] = float(rng.normal())
            rows.append(row)
        chosen = int(rng.integers(0, 4))
        reward = VALUE if rng.random() < P_CONVERT[chosen] else 0.0
        record = {"impression_id": f"i-{k}", "offer_id": offer_id, "variant": 0,
                  "propensity": 0.25, "reward": reward, "converted": reward > 0,
                  "policy_version": "v0-greedy", "variant_features": rows, "chosen": chosen,
                  "expected_rewards": [float(x) for x in P_CONVERT * VALUE],
                  "support": [0, 1, 2, 3]}
        out.append((offer_id.encode(), msgspec.json.encode(record)))
    return out


def newest_offer_versions(settings: Settings, after_ts: int, count: int) -> set[str]:
    codec = EventCodec()

    def fresh(records: list[Any]) -> list[Any]:
        offers = [codec.decode_offer(r.value) for r in records]
        return [o for o in offers if o.ts >= after_ts]

    records = consume(settings, settings.topics.offers, lambda rs: len(fresh(rs)) >= count,
                      timeout_s=30)
    return {o.policy_version for o in fresh(records)}


def trainer_snapshot(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        return parse_snapshot(page.read().decode())


def adopted(worker: Any, version: str) -> bool:
    adoptions = worker.stats().get("streamer_policy_adoptions_total", {})
    return version in adoptions


def test_feedback_to_promotion_to_adoption_to_rollback(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"trainer": TrainerSettings(
        min_records=1000, every_records=1000, buffer_records=10_000, epochs=8, batch_size=128,
        learning_rate=0.02, device="auto", offer_index_size=1000, metrics_port=free_port())})
    worker = start_worker(settings)
    produce(settings, settings.topics.purchases, purchases("a", 3))
    first = consume(settings, settings.topics.offers, lambda rs: len(rs) >= 1, timeout_s=30)
    offer = EventCodec().decode_offer(first[0].value)
    assert offer.policy_version == "v0-greedy"

    log = open(tmp_path / "trainer.log", "ab")  # noqa: SIM115 - closed in finally
    trainer = subprocess.Popen([sys.executable, "-m", "streamer", "trainer"],
                               env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        produce(settings, settings.topics.feedback, feedback(offer.offer_id, 1000))
        published = consume(settings, settings.topics.policy_updates, lambda rs: len(rs) >= 1,
                            timeout_s=90)
        assert published, (tmp_path / "trainer.log").read_text()[-3000:]
        versions = asyncio.run(read_versions(settings))
        live = versions.versions()[-1]
        assert live.live and live.version.startswith("torch-")
        assert live.metadata["device"] == "cpu" and live.metadata["train_size"] == 800
        assert live.metadata["interval"][0] > live.metadata["live_estimate"]
        # The trainer's /metrics: the promotion, and the gate's margin for it (what the demo
        # shows), the paired lower bound of the difference the version was published with.
        trainer_metrics = trainer_snapshot(settings.trainer.metrics_port)
        assert trainer_metrics["streamer_trainer_promotions_total"] == 1
        margin = trainer_metrics["streamer_trainer_gate_margin"]
        assert margin == pytest.approx(live.metadata["difference"]["lower"])
        assert isinstance(margin, float) and margin > 0

        wait_for(lambda: adopted(worker, live.version), 30, "the worker to adopt the version")
        after = int(time.time() * 1000)
        produce(settings, settings.topics.purchases, purchases("b", 3))
        assert newest_offer_versions(settings, after, 3) == {live.version}

        asyncio.run(publish_rollback(settings, "v0-greedy", reason="test"))
        wait_for(lambda: adopted(worker, "v0-greedy"), 30, "the worker to roll back")
        after = int(time.time() * 1000)
        produce(settings, settings.topics.purchases, purchases("c", 3))
        assert newest_offer_versions(settings, after, 3) == {"v0-greedy"}
        assert asyncio.run(read_versions(settings)).live_version == "v0-greedy"
    finally:
        stop_process_group(trainer)
        log.close()
    assert trainer.returncode == 0, (tmp_path / "trainer.log").read_text()[-3000:]


def test_a_trainer_asked_to_stop_mid_fine_tune_exits_0_within_seconds(
    settings: Settings, tmp_path: Path
) -> None:
    # Epochs for half an hour: the fine-tune is surely running when SIGTERM comes, and only the
    # stop request can end it in time (Kubernetes allows 30 s, the demo 15 s).
    settings = settings.model_copy(update={"trainer": TrainerSettings(
        min_records=1000, every_records=1000, buffer_records=10_000, epochs=100_000,
        batch_size=128, device="cpu", offer_index_size=1000)})
    log_path = tmp_path / "trainer.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed in finally
    trainer = subprocess.Popen([sys.executable, "-m", "streamer", "trainer"],
                               env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: "trainer consuming" in log_path.read_text(), 60,
                 "the trainer to start", explain=lambda: log_path.read_text()[-3000:])
        produce(settings, settings.topics.feedback, feedback("an-offer", 1000))
        wait_for(lambda: "fine-tune of" in log_path.read_text(), 60, "a fine-tune to start",
                 explain=lambda: log_path.read_text()[-3000:])
        asked = time.monotonic()
        trainer.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            trainer.wait(10)
        stopped_in = time.monotonic() - asked
    finally:
        stop_process_group(trainer)
        log.close()
    out = log_path.read_text()
    assert trainer.returncode == 0, out[-3000:]
    # About 4 s here: the abandonment within a step, but also, once per process, the first
    # optimizer's import of torch._dynamo (~2 s, not interruptible) and the interpreter's
    # exit with torch loaded (~2 s). The fine-tune itself had hours to go.
    assert stopped_in < 10, (stopped_in, out[-3000:])
    assert "fine-tune abandoned: shutting down" in out, out[-3000:]
    # Nothing published: the half-trained candidate was never judged.
    assert asyncio.run(read_versions(settings)).live_version == "v0-greedy"
