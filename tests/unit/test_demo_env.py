"""The demo's (and ``streamer simulate``'s) child-process environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.app.broker import EMBEDDED_FETCH_MAX_WAIT_MS, on_embedded
from streamer.app.demo import DEMO_OFFERS_ENV, DEMO_TRAINER_ENV, demo_env
from streamer.settings import Settings


def env_for(tmp_path: Path) -> dict[str, str]:
    return demo_env(Settings(), bootstrap="127.0.0.1:1", app_id="demo-x", web_port=2,
                    data_dir=tmp_path)


def test_the_demo_sets_its_broker_windows_and_the_trainers_and_offers_cadence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in {**DEMO_TRAINER_ENV, **DEMO_OFFERS_ENV}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAMER__KAFKA__BOOTSTRAP_SERVERS", "elsewhere:9092")
    env = env_for(tmp_path)
    assert env["STREAMER__KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:1"  # its own broker wins
    assert env["STREAMER__WORKER__APP_ID"] == "demo-x"
    assert env["STREAMER__REWARDS__ATTRIBUTION_WINDOW_S"] == "5"
    for name, value in {**DEMO_TRAINER_ENV, **DEMO_OFFERS_ENV}.items():
        assert env[name] == value
    # ... as settings the child processes read
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.trainer.min_records == 200 and settings.trainer.every_s == 10.0
    assert settings.rewards.attribution_window_s == 5
    # Offers reconsidered every min_interval_s, every change republished.
    assert settings.offers.max_recheck_interval_s == 0 and settings.offers.min_change == 0
    assert settings.offers.epsilon == 0.3  # v0 explores enough for the gate to judge in minutes


def test_a_cadence_set_in_the_environment_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER__TRAINER__EVERY_S", "3")
    monkeypatch.setenv("STREAMER__OFFERS__MIN_CHANGE", "0.05")
    monkeypatch.delenv("STREAMER__OFFERS__MAX_RECHECK_INTERVAL_S", raising=False)
    env = env_for(tmp_path)
    assert float(env["STREAMER__TRAINER__EVERY_S"]) == 3.0  # as settings read it
    assert env["STREAMER__TRAINER__MIN_RECORDS"] == DEMO_TRAINER_ENV[
        "STREAMER__TRAINER__MIN_RECORDS"]
    assert env["STREAMER__OFFERS__MIN_CHANGE"] == "0.05"
    assert env["STREAMER__OFFERS__MAX_RECHECK_INTERVAL_S"] == "0"


def test_a_cadence_set_in_the_env_file_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The children read .env too, but a variable in their environment wins over it: the
    # demo's 0.3 overrode a user's .env line.
    for name in {**DEMO_TRAINER_ENV, **DEMO_OFFERS_ENV}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("STREAMER__OFFERS__EPSILON=0.2\n")
    env = demo_env(Settings(), bootstrap="127.0.0.1:1", app_id="demo-x", web_port=2,
                   data_dir=tmp_path)
    assert env["STREAMER__OFFERS__EPSILON"] == "0.2"
    assert env["STREAMER__OFFERS__MIN_CHANGE"] == "0"  # the rest of the cadence still applies
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().offers.epsilon == 0.2  # what a child reads
    # Set in code: the children see it only through their environment.
    for name in {**DEMO_TRAINER_ENV, **DEMO_OFFERS_ENV}:
        monkeypatch.delenv(name, raising=False)
    coded = Settings(trainer={"every_s": 5.0})
    env = demo_env(coded, bootstrap="127.0.0.1:1", app_id="demo-x", web_port=2,
                   data_dir=tmp_path)
    assert env["STREAMER__TRAINER__EVERY_S"] == "5.0"


def test_workers_against_the_embedded_broker_fetch_with_its_short_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's default fetch wait is Kafka's (500 ms: no latency there, no idle polling);
    the embedded broker holds a fetch of several partitions for the whole wait, so the demo's
    worker and settings take 20 ms, unless a wait is configured."""
    monkeypatch.delenv("STREAMER__KAFKA__FETCH_MAX_WAIT_MS", raising=False)
    assert Settings().kafka.fetch_max_wait_ms == 500
    env = env_for(tmp_path)
    assert env["STREAMER__KAFKA__FETCH_MAX_WAIT_MS"] == str(EMBEDDED_FETCH_MAX_WAIT_MS) == "20"
    embedded = on_embedded(Settings(), "127.0.0.1:1")
    assert (embedded.kafka.bootstrap_servers, embedded.kafka.fetch_max_wait_ms) == (
        "127.0.0.1:1", 20)

    monkeypatch.setenv("STREAMER__KAFKA__FETCH_MAX_WAIT_MS", "500")  # set, even to the default
    assert env_for(tmp_path)["STREAMER__KAFKA__FETCH_MAX_WAIT_MS"] == "500"
    assert on_embedded(Settings(), "127.0.0.1:1").kafka.fetch_max_wait_ms == 500
