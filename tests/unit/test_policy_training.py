"""Fine-tuning, the promotion gate, checkpoints and the trainer's triggers."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save

from streamer.policy import (
    FeedbackBatch,
    FeedbackBuffer,
    FineTuneAbandoned,
    FineTuneConfig,
    LoggedDecision,
    PolicyTrainer,
    PolicyVersions,
    TorchPolicy,
    UnsafeCheckpointError,
    evaluate_policy,
    fine_tune,
    policy_from_bytes,
    policy_to_bytes,
    rollback_record,
    select_device,
    should_promote,
)
from streamer.policy.ope import ips
from streamer.policy.torch_policy import version_of
from streamer.policy.training import evaluate_scorer

torch.set_num_threads(1)

# A 4-variant bandit; variant 2 converts far more often. Features: the variant's one-hot id
# plus one noise column; the logging policy is uniform.
NAMES = ("v0", "v1", "v2", "v3", "noise")
P_CONVERT = np.array([0.05, 0.10, 0.40, 0.10])
VALUE = 10.0
BEST = 2


def bandit(n: int, seed: int) -> FeedbackBatch:
    rng = np.random.default_rng(seed)
    features = np.zeros((n, 4, len(NAMES)), dtype=np.float32)
    features[:, np.arange(4), np.arange(4)] = 1.0
    features[:, :, 4] = rng.normal(size=(n, 4))
    chosen = rng.integers(0, 4, size=n)
    reward = np.where(rng.random(n) < P_CONVERT[chosen], VALUE, 0.0)
    return FeedbackBatch(
        features=features,
        valid=np.ones((n, 4), dtype=np.bool_),
        chosen=chosen.astype(np.int64),
        propensity=np.full(n, 0.25),
        reward=reward,
        expected_reward=np.tile(P_CONVERT * VALUE, (n, 1)).astype(np.float32),
        supported=np.ones((n, 4), dtype=np.bool_),  # uniform logging: every variant possible
    )


def fresh_policy() -> TorchPolicy:
    return TorchPolicy.initial(
        NAMES, hidden=8, discount_levels=(0.0,), floor=0.02, max_variants=None, seed=0
    )


def best_probability(policy: TorchPolicy) -> float:
    batch = bandit(1, seed=99)
    with torch.no_grad():
        scores = policy.scorer(torch.from_numpy(batch.features))
    probs = torch.softmax(scores / policy.shape.temperature, -1)[0]
    return float(0.02 + (1 - 4 * 0.02) * probs[BEST])


CONFIG = FineTuneConfig(epochs=8, batch_size=128, learning_rate=0.02, device="cpu")


@pytest.mark.parametrize("objective", ["dr", "ips"])
def test_training_on_a_bandit_favours_the_better_variant(objective: str) -> None:
    live = fresh_policy()
    config = FineTuneConfig(**{**_fields(CONFIG), "objective": objective})
    result = fine_tune(live, bandit(3000, seed=1), config)
    assert best_probability(live) == pytest.approx(0.25)
    assert best_probability(result.candidate) > 0.6
    cand, base = result.candidate_evaluation.primary, result.live_evaluation.primary
    assert cand.value > base.value + 1.0
    # The live policy is uniform: its estimate is the mean of the true arm values.
    assert base.value == pytest.approx(float(P_CONVERT.mean() * VALUE), abs=3 * base.stderr)
    assert result.promoted and result.reason.startswith("promoted")
    assert result.candidate.parent == live.version != result.candidate.version
    assert result.train_size == 2400 and result.holdout_size == 600


def _fields(config: FineTuneConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def test_no_training_is_not_promoted() -> None:
    # Zero epochs: the candidate is the live policy; its lower bound cannot beat itself.
    result = fine_tune(fresh_policy(), bandit(2000, seed=2), FineTuneConfig(epochs=0))
    assert not result.promoted and result.reason.startswith("rejected")
    assert result.metadata()["promoted"] is False


def nan_policy() -> TorchPolicy:
    policy = fresh_policy()
    scorer = policy.scorer
    with torch.no_grad():
        next(iter(scorer.parameters())).fill_(float("nan"))
    return TorchPolicy(scorer, policy.shape, version="torch-nan", parent=None)


def test_a_candidate_with_nan_weights_is_never_promoted() -> None:
    result = fine_tune(nan_policy(), bandit(2000, seed=3), CONFIG)
    assert not result.promoted
    assert "non-finite" in result.reason
    meta = result.metadata()
    json.dumps(meta, allow_nan=False)  # the rejection log stays valid JSON
    with pytest.raises(UnsafeCheckpointError):
        result.checkpoint()
    with pytest.raises(UnsafeCheckpointError):
        policy_to_bytes(nan_policy())
    # The gate itself refuses non-finite figures whatever they are compared with.
    nan_estimate = ips([0.5, 0.5], [1.0, 0.0], [float("nan"), 0.5])
    finite = ips([0.5, 0.5], [0.0, 0.0], [0.5, 0.5])
    assert not should_promote(nan_estimate, finite)
    assert not should_promote(finite, nan_estimate)


def test_a_serialised_policy_with_nan_weights_is_refused() -> None:
    good = policy_to_bytes(fresh_policy())
    policy, _ = policy_from_bytes(good)
    tensors = {k: v.clone() for k, v in policy.scorer.state_dict().items()}
    tensors["layers.0.weight"][0, 0] = float("nan")
    header_len = int.from_bytes(good[:8], "little")
    metadata = json.loads(good[8 : 8 + header_len])["__metadata__"]
    with pytest.raises(UnsafeCheckpointError, match="non-finite"):
        policy_from_bytes(save(tensors, metadata=metadata))


def test_tampered_truncated_or_oversized_checkpoints_are_refused() -> None:
    good = policy_to_bytes(fresh_policy())
    policy, _ = policy_from_bytes(good)
    tensors = {k: v.clone() for k, v in policy.scorer.state_dict().items()}
    tensors["layers.4.bias"] += 1.0  # different weights, same claimed version
    header_len = int.from_bytes(good[:8], "little")
    metadata = json.loads(good[8 : 8 + header_len])["__metadata__"]
    with pytest.raises(UnsafeCheckpointError, match="version"):
        policy_from_bytes(save(tensors, metadata=metadata))
    for bad in (good[:20], b"", b"\x00" * 64, b"x" * (17 * 1024 * 1024)):
        with pytest.raises(UnsafeCheckpointError):
            policy_from_bytes(bad)


def with_shape(data: bytes, **fields: object) -> bytes:
    """``data`` re-saved with shape fields replaced (weights and version untouched)."""
    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_len])["__metadata__"]
    shape = json.loads(metadata["streamer.shape"])
    shape.update(fields)
    metadata["streamer.shape"] = json.dumps(shape)
    policy, _ = policy_from_bytes(data)
    return save({k: v.clone() for k, v in policy.scorer.state_dict().items()},
                metadata=metadata)


@pytest.mark.parametrize("fields", [
    {"max_variants": 2.5},
    {"max_variants": "8"},
    {"max_variants": True},
    {"hidden": 8.0},
    {"hidden": "8"},
    {"hidden": 10**6},  # more than the tensors hold: refused before building it
    {"temperature": float("inf")},
    {"temperature": "1"},
    {"floor": None},
    {"prior_scale": float("nan")},
    {"discount_levels": [0.0, "5"]},
    {"discount_levels": "0"},
    {"feature_names": ["v0", "v1", "v2", "v3", 4]},
    {"feature_names": ["v0", "v1", "v2", "v3", "v3"]},
    {"value_prior": ["v0"]},
])
def test_a_checkpoint_whose_shape_fields_have_the_wrong_type_is_refused(
    fields: dict[str, object],
) -> None:
    good = policy_to_bytes(fresh_policy())
    assert policy_from_bytes(with_shape(good))[0].version == fresh_policy().version
    with pytest.raises(UnsafeCheckpointError, match="malformed"):
        policy_from_bytes(with_shape(good, **fields))


@pytest.mark.parametrize("fields", [
    {"max_variants": 4}, {"temperature": 0.5}, {"floor": 0.1}, {"discount_levels": (0.0, 5.0)},
])
def test_a_versions_name_covers_its_shape_not_only_its_weights(
    fields: dict[str, object],
) -> None:
    # Same weights, another shape: another policy, so another name, on the topic and after.
    policy = fresh_policy()
    shape = dataclasses.replace(policy.shape, **fields)
    other = TorchPolicy(policy.scorer, shape, version=version_of(policy.scorer, shape),
                        parent=None)
    assert other.version != policy.version
    versions = PolicyVersions(base_version="v0")
    for p in (policy, other):
        assert versions.apply(policy_to_bytes(p)).version == p.version
    assert [v.version for v in versions.versions()] == ["v0", policy.version, other.version]
    back = versions.apply(rollback_record(policy.version)).policy
    assert back is not None and back.shape == policy.shape
    # A record whose shape was changed under its name is refused, as changed weights are.
    with pytest.raises(UnsafeCheckpointError, match="version"):
        policy_from_bytes(with_shape(policy_to_bytes(policy), **fields))


@pytest.mark.parametrize("meta", [
    '"a string"', "[]", "null",  # raised AttributeError out of every reader of the topic
    '{"version": 1e999}', '{"version": NaN}', "[" * 5000 + "]" * 5000,
])
def test_a_checkpoint_whose_metadata_is_no_json_object_is_refused(meta: str) -> None:
    policy = fresh_policy()
    data = policy_to_bytes(policy)
    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_len])["__metadata__"] | {"streamer.meta": meta}
    bad = save({k: v.clone() for k, v in policy.scorer.state_dict().items()}, metadata=metadata)
    versions = PolicyVersions(base_version="v0")
    with pytest.raises(UnsafeCheckpointError):
        versions.apply(bad)
    assert (versions.live_version, versions.rejected) == ("v0", 1)


def test_a_version_published_before_names_covered_the_shape_still_loads() -> None:
    # As the previous release wrote it: the shape by json.dumps, the name of the weights alone.
    policy = fresh_policy()
    tensors = {k: v.clone() for k, v in policy.scorer.state_dict().items()}
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.to(torch.float32).contiguous().numpy().tobytes())
    old_name = f"torch-{digest.hexdigest()[:12]}"
    metadata = {"format": "pt", "streamer.shape": json.dumps(dataclasses.asdict(policy.shape)),
                "streamer.meta": json.dumps({"version": old_name, "parent": None})}
    old = save(tensors, metadata=metadata)
    loaded, _ = policy_from_bytes(old)
    assert loaded.version == old_name != policy.version and loaded.shape == policy.shape
    versions = PolicyVersions(base_version="v0")
    versions.apply(old)
    assert versions.apply(rollback_record(old_name)).version == old_name  # still its name
    tensors["layers.4.bias"] += 1.0  # its weights are still checked against it
    with pytest.raises(UnsafeCheckpointError, match="version"):
        policy_from_bytes(save(tensors, metadata=metadata))


def test_safetensors_round_trip_preserves_outputs_exactly() -> None:
    result = fine_tune(fresh_policy(), bandit(1500, seed=4), CONFIG)
    data = result.checkpoint()
    loaded, meta = policy_from_bytes(data)
    x = torch.from_numpy(bandit(64, seed=5).features)
    with torch.no_grad():
        assert torch.equal(loaded.scorer(x), result.candidate.scorer(x))
    assert loaded.version == result.candidate.version == version_of(loaded.scorer, loaded.shape)
    assert loaded.shape == result.candidate.shape
    assert meta["parent"] == result.live_version
    assert meta["train_size"] == 1200 and meta["device"] == "cpu"
    assert meta["estimator"] == "dr" and len(meta["interval"]) == 2
    assert meta["seconds"] > 0
    assert evaluate_policy(loaded, bandit(500, seed=6)) == evaluate_policy(
        result.candidate, bandit(500, seed=6)
    )


def test_fine_tune_refuses_a_batch_of_another_number_of_features() -> None:
    # A clear error before training, not a shape error deep inside torch.
    fewer = TorchPolicy.initial(NAMES[:-1], hidden=8, discount_levels=(0.0,), seed=0)
    with pytest.raises(ValueError, match="the policy reads 4"):
        fine_tune(fewer, bandit(100, seed=1), CONFIG)


def test_cpu_is_picked_without_a_gpu_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto", max_threads=1).type == "cpu"
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError, match="cuda"):
        select_device("cuda")
    result = fine_tune(fresh_policy(), bandit(500, seed=7), FineTuneConfig(epochs=1))
    assert result.device == "cpu" and result.metadata()["device"] == "cpu"


def test_dr_objective_needs_model_predictions() -> None:
    batch = bandit(100, seed=8)
    without = FeedbackBatch(
        batch.features, batch.valid, batch.chosen, batch.propensity, batch.reward, None,
        supported=batch.supported,
    )
    with pytest.raises(ValueError, match="expected_reward"):
        fine_tune(fresh_policy(), without, FineTuneConfig(objective="dr"))
    result = fine_tune(fresh_policy(), without, FineTuneConfig(objective="ips", epochs=1))
    assert result.candidate_evaluation.primary.estimator == "snips"


def decision(x: float, reward: float = 1.0) -> LoggedDecision:
    rows = [{n: 0.0 for n in NAMES} for _ in range(4)]
    rows[0]["noise"] = x
    return LoggedDecision(
        variant_features=rows, chosen=0, propensity=0.25, reward=reward, expected_rewards=[0.5] * 4
    )


def test_buffer_keeps_the_newest_records_oldest_first() -> None:
    buffer = FeedbackBuffer(NAMES, capacity=3, max_actions=4)
    for i in range(5):
        buffer.append(decision(float(i)))
    batch = buffer.snapshot()
    assert batch.features[:, 0, 4].tolist() == [2.0, 3.0, 4.0]
    assert batch.expected_reward is not None and len(buffer) == 3
    buffer.extend(bandit(4, seed=9))  # wraps; the array path keeps the order too
    assert buffer.total_added == 9 and len(buffer.snapshot()) == 3


def test_buffer_remembers_which_version_logged_each_record_and_only_those() -> None:
    buffer = FeedbackBuffer(NAMES, capacity=4, max_actions=4)
    for i, version in enumerate(["v0", None, "v1", "v0", "v2"]):
        buffer.append(dataclasses.replace(decision(float(i)), policy_version=version))
    batch = buffer.snapshot()  # the ring wrapped: the oldest "v0" is gone
    assert batch.logged_by is not None and batch.logged_by.tolist() == [None, "v1", "v0", "v2"]
    assert batch.split(0.5)[1].logged_by.tolist() == ["v0", "v2"]  # type: ignore[union-attr]
    buffer.extend(batch.take(slice(1, 3)))  # the array path keeps them too
    assert buffer.snapshot().logged_by.tolist() == ["v0", "v2", "v1", "v0"]  # type: ignore[union-attr]
    for k in range(20):  # versions no record holds any more are forgotten
        buffer.append(dataclasses.replace(decision(0.0), policy_version=f"x{k}"))
    assert set(buffer._version.tolist()) == {"x16", "x17", "x18", "x19"}  # all it refers to
    assert buffer.snapshot().logged_by.tolist() == ["x16", "x17", "x18", "x19"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad",
    [
        LoggedDecision(variant_features=[], chosen=0, propensity=0.5, reward=1.0),
        LoggedDecision(
            variant_features=[{n: 0.0 for n in NAMES}], chosen=1, propensity=0.5, reward=1.0
        ),
        LoggedDecision(
            variant_features=[{n: 0.0 for n in NAMES}], chosen=0, propensity=0.0, reward=1.0
        ),
        LoggedDecision(
            variant_features=[{n: 0.0 for n in NAMES}],
            chosen=0,
            propensity=0.5,
            reward=float("inf"),
        ),
        LoggedDecision(variant_features=[{"v0": 1.0}], chosen=0, propensity=0.5, reward=1.0),
        LoggedDecision(
            variant_features=[{**{n: 0.0 for n in NAMES}, "v0": float("nan")}],
            chosen=0,
            propensity=0.5,
            reward=1.0,
        ),
    ],
)
def test_buffer_refuses_malformed_records(bad: LoggedDecision) -> None:
    buffer = FeedbackBuffer(NAMES, capacity=3, max_actions=4)
    with pytest.raises(ValueError):
        buffer.append(bad)
    assert len(buffer) == 0


def test_trainer_triggers_on_records_time_and_drift() -> None:
    trainer = PolicyTrainer(
        NAMES,
        capacity=100,
        max_actions=4,
        every_records=10,
        every_seconds=60.0,
        min_records=4,
        config=FineTuneConfig(epochs=1, holdout_fraction=0.5),
        start_s=1000.0,
    )
    for i in range(3):
        trainer.add(decision(float(i)))
    trainer.request_fine_tune("drift on reward:v1")
    assert trainer.due(now_s=1000.0) is None  # too few records, even on drift
    trainer.add(decision(3.0))
    assert trainer.due(now_s=1000.0) == "drift on reward:v1"
    live = fresh_policy()
    trainer.fine_tune(live, now_s=1001.0)
    assert trainer.due(now_s=1001.0) is None and trainer.new_records == 0
    assert trainer.due(now_s=5000.0) is None  # time passed but nothing new
    trainer.add(decision(4.0))
    assert trainer.due(now_s=1050.0) is None
    assert trainer.due(now_s=1061.0) == "60 s since the last fine-tune"
    for i in range(9):
        trainer.add(decision(float(i)))
    assert trainer.due(now_s=1002.0) == "10 new records"
    result = trainer.fine_tune(live, now_s=1002.0)
    assert [h["version"] for h in trainer.history][-1] == result.candidate.version
    assert len(trainer.history) == 2


def test_the_paired_gate_promotes_a_real_improvement_the_unpaired_comparison_misses() -> None:
    # Contexts of very different value (a price scale per record, the direct-method model
    # exact): each policy's own DR interval is wide because of the contexts, but both see the
    # same contexts, so the paired difference is narrow. One short epoch makes a candidate only
    # slightly better than uniform, and truly so (it moved mass to the best arm).
    b = bandit(500, seed=4)
    scale = np.random.default_rng(104).lognormal(0.0, 1.0, size=500)
    batch = FeedbackBatch(b.features, b.valid, b.chosen, b.propensity, b.reward * scale,
                          (b.expected_reward * scale[:, None]).astype(np.float32),
                          supported=b.supported)
    live = fresh_policy()
    result = fine_tune(live, batch, FineTuneConfig(**{**_fields(CONFIG), "epochs": 1,
                                                      "min_steps": 0}))
    assert best_probability(result.candidate) > best_probability(live)
    cand, base = result.candidate_evaluation.primary, result.live_evaluation.primary
    assert cand.estimator == "dr" and result.holdout_size == 100
    assert not should_promote(cand, base)  # the unpaired intervals cannot tell
    assert result.difference is not None and result.difference.lower > 0
    assert result.promoted and "paired lower bound" in result.reason
    meta = result.metadata()
    assert meta["gate_lower_bound"] == pytest.approx(base.value + result.difference.lower)


def test_a_value_prior_policy_round_trips_and_starts_from_the_prior() -> None:
    names = ("p", "log_price", "x")
    policy = TorchPolicy.initial(names, hidden=8, discount_levels=(0.0,), floor=0.0,
                                 max_variants=None, value_prior=("p", "log_price"),
                                 prior_scale=1.0, seed=0)
    rows = [{"p": 0.1, "log_price": float(np.log1p(10.0)), "x": 0.0},
            {"p": 0.1, "log_price": float(np.log1p(30.0)), "x": 0.0}]
    with torch.no_grad():
        probs = torch.softmax(policy.scorer(policy.pack(rows)), -1).tolist()
    assert probs == pytest.approx([0.25, 0.75], abs=1e-4)  # proportional to p x price
    loaded, _ = policy_from_bytes(policy_to_bytes(policy))
    assert loaded.shape == policy.shape and loaded.version == policy.version
    with pytest.raises(ValueError, match="unknown features"):
        TorchPolicy.initial(names, value_prior=("p", "nope"))


def test_a_fine_tune_asked_to_stop_ends_within_a_second_without_a_candidate() -> None:
    # A thousand epochs (a minute here): only the stop request ends it within the test, as
    # the trainer's shutdown (SIGTERM) asks from its event loop's thread.
    config = dataclasses.replace(CONFIG, epochs=1_000)
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(fine_tune, fresh_policy(), bandit(3000, seed=1), config, stop=stop)
        with pytest.raises(TimeoutError):
            running.result(timeout=0.5)  # still training
        asked = time.perf_counter()
        stop.set()
        with pytest.raises(FineTuneAbandoned):
            running.result(timeout=5)
        assert time.perf_counter() - asked < 1.0


def test_an_evaluation_asked_to_stop_ends_between_chunks() -> None:
    # The gate's evaluation of a large holdout takes seconds too: it stops as training does,
    # and leaves the scorer's mode as it found it.
    policy = fresh_policy()
    stop = threading.Event()
    stop.set()
    was_training = policy.scorer.training
    with pytest.raises(FineTuneAbandoned):
        evaluate_scorer(policy.scorer, policy.shape, bandit(100, seed=1), chunk=10, stop=stop)
    assert policy.scorer.training == was_training


def test_a_small_buffer_still_gets_min_steps_of_training() -> None:
    # Two passes over a few thousand records at a large batch are a handful of steps: the
    # candidate stays its parent. min_steps makes a small buffer take more passes.
    batch = bandit(400, seed=3)
    config = FineTuneConfig(epochs=1, batch_size=1024, learning_rate=0.02, device="cpu")
    few = fine_tune(fresh_policy(), batch, dataclasses.replace(config, min_steps=0))
    enough = fine_tune(fresh_policy(), batch, dataclasses.replace(config, min_steps=200))
    assert best_probability(few.candidate) < 0.3 < 0.6 < best_probability(enough.candidate)
    with pytest.raises(ValueError):
        FineTuneConfig(min_steps=-1)


@pytest.mark.parametrize("confidence", [0.0, 1.0, float("nan")])
def test_a_gate_confidence_outside_0_1_is_refused_when_configured(confidence: float) -> None:
    # Not at the first gate, after a whole fine-tune (or, in the simulator, minutes of run).
    with pytest.raises(ValueError, match="confidence"):
        FineTuneConfig(confidence=confidence)


@pytest.mark.parametrize("appended", [3, 7])  # the ring not yet full, and wrapped around
def test_a_snapshot_does_not_change_as_the_buffer_goes_on(appended: int) -> None:
    """A fine-tune trains on a snapshot in another thread while records keep coming."""
    buffer = FeedbackBuffer(("x", "y"), capacity=5, max_actions=2)

    def add(i: int) -> None:
        rows = ({"x": float(i), "y": 0.0}, {"x": float(i), "y": 1.0})
        buffer.append(LoggedDecision(rows, 0, 0.5, float(i), (0.1, 0.2), f"v{i}"))

    for i in range(appended):
        add(i)
    snap = buffer.snapshot()
    reordered = buffer.snapshot(("y", "x"))
    before = [a.copy() for a in (snap.features, snap.reward, snap.expected_reward,
                                 snap.logged_by, reordered.features)]
    for i in range(appended, appended + 5):
        add(i)
    after = (snap.features, snap.reward, snap.expected_reward, snap.logged_by,
             reordered.features)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
