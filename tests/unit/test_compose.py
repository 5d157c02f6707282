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


def test_a_worker_that_exits_on_an_agent_crash_is_restarted(compose: dict[str, Any]) -> None:
    # streamer.app.crashes: an agent that raises stops the worker with exit status 1, to be
    # restarted from its last commit.
    assert compose["services"]["worker"]["restart"] in {"always", "unless-stopped", "on-failure"}


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


def test_prometheus_scrapes_the_workers_metrics_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"prometheus", "grafana"} <= set(services)
    mounted = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml" in mounted
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    worker_port = int(compose["services"]["worker"]["environment"]["STREAMER__WORKER__WEB_PORT"])
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == worker_port


def test_grafana_is_provisioned_with_the_dashboard(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["grafana"]["volumes"]
    for host_path in (v.split(":")[0] for v in volumes):
        assert (ROOT / host_path).exists(), host_path
    sources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/streamer.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert any(v.endswith(":/var/lib/grafana/dashboards:ro") for v in volumes)


def test_dashboard_queries_use_metrics_the_code_defines() -> None:
    import json
    import re

    from streamer.observability import Metrics

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/streamer.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bstreamer_[a-z_]+", e)}
    defined = Metrics().exposed_names()
    assert used and used <= defined, used - defined
    # The metrics are all on the dashboard.
    for name in ("streamer_reward_per_impression", "streamer_consumer_lag",
                 "streamer_dead_letters_total", "streamer_guardrail_alarm",
                 "streamer_trainer_promotions_total", "streamer_trainer_rejections_total",
                 "streamer_late_events_total", "streamer_reward_impressions_total"):
        assert name in used, name
