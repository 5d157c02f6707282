"""docker-compose.yml cannot run here (no Docker engine): check what can be checked of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.app.worker import topic_names
from streamer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_exist(compose: dict[str, Any]) -> None:
    assert {"kafka", "topics", "worker"} <= set(compose["services"])
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper


def test_created_topics_are_the_ones_the_code_uses(compose: dict[str, Any]) -> None:
    env = compose["services"]["topics"]["environment"]
    assert env["STREAMER_TOPICS"].split() == topic_names(Settings())
    worker_env = compose["services"]["worker"]["environment"]
    assert env["STREAMER_PARTITIONS"] == worker_env["STREAMER__TOPICS__PARTITIONS"]


def test_worker_environment_builds_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = compose["services"]["worker"]["environment"]
    for key in list(os.environ):
        if key.startswith("STREAMER__"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    s = Settings()  # extra="forbid": an unknown or misspelt variable fails here
    assert s.kafka.bootstrap_servers == "kafka:9092"
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"].endswith(s.kafka.bootstrap_servers)
    assert str(s.worker.web_port) in [str(p) for p in compose["services"]["worker"]["expose"]]


def test_dockerfile_installs_the_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and "streamer" in text
