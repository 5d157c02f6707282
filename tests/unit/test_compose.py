"""docker-compose.yml cannot run here (no Docker engine): check what can be checked of it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from aiokafka.admin import NewTopic

from streamer.app import kafka
from streamer.app.worker import ensure_topics, topic_configs, topic_names
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


def test_policy_updates_is_kept_forever_by_the_code_and_by_compose(
        compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers and the trainer replay policy-updates from its beginning to rebuild versions and
    rollbacks: it must never lose a record to retention, however it was created."""
    forever = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
    settings = Settings()
    assert topic_configs(settings) == {settings.topics.policy_updates: forever}
    created: list[NewTopic] = []

    class Admin:
        def __init__(self, **kwargs: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        async def list_topics(self) -> list[str]:
            return [settings.topics.clicks]  # existing: left as it is

        async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
            assert names == [settings.topics.clicks]
            return [{"topic": names[0], "error_code": 0,
                     "partitions": [{}] * settings.topics.partitions}]

        async def create_topics(self, topics: list[NewTopic]) -> Any:
            created.extend(topics)
            return SimpleNamespace(topic_errors=[(t.name, 0, None) for t in topics])

        async def close(self) -> None:
            pass

    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", Admin)  # admin_client builds it
    asyncio.run(ensure_topics(settings))
    configs = {t.name: t.topic_configs for t in created}
    assert set(configs) == set(topic_names(settings)) - {settings.topics.clicks}
    assert configs.pop(settings.topics.policy_updates) == forever
    assert all(c == {} for c in configs.values())  # the others: the broker's defaults
    env = compose["services"]["topics"]["environment"]
    assert env["STREAMER_KEEP_FOREVER_TOPICS"].split() == list(topic_configs(settings))
    assert dict(kv.split("=") for kv in env["STREAMER_KEEP_FOREVER_CONFIG"].split(",")) == forever
    (script,) = compose["services"]["topics"]["command"]
    assert "set -e" in script  # a failed creation or setting stops the workers from starting
    assert ('--entity-name "$$t" --add-config "$$STREAMER_KEEP_FOREVER_CONFIG"' in script
            and "for t in $$STREAMER_KEEP_FOREVER_TOPICS" in script)


def settings_of(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process with exactly ``env``'s STREAMER__ variables builds."""
    for key in list(os.environ):
        if key.startswith("STREAMER__"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return Settings()  # extra="forbid": an unknown or misspelt variable fails here


def test_worker_environment_builds_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings_of(compose["services"]["worker"]["environment"], monkeypatch)
    assert s.kafka.bootstrap_servers == "kafka:9092"
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"].endswith(s.kafka.bootstrap_servers)
    assert str(s.worker.web_port) in [str(p) for p in compose["services"]["worker"]["expose"]]


def test_dockerfile_installs_the_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and "streamer" in text


def scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_the_workers_metrics_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"prometheus", "grafana"} <= set(services)
    mounted = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml" in mounted
    job = scrape_jobs()["streamer-worker"]
    assert job["metrics_path"] == "/metrics"
    worker_port = int(compose["services"]["worker"]["environment"]["STREAMER__WORKER__WEB_PORT"])
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == worker_port


def test_the_trainer_runs_beside_the_workers_and_prometheus_scrapes_it(
        compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """design.md: compose runs the workers *and the trainer*; the dashboard's trainer panels
    read its metrics, which it serves on an address Prometheus can reach."""
    trainer = compose["services"]["trainer"]
    assert trainer["command"] == ["streamer", "trainer"]
    assert trainer["restart"] in {"always", "unless-stopped", "on-failure"}
    assert "trainer" in compose["services"]["prometheus"]["depends_on"]
    s = settings_of(trainer["environment"], monkeypatch)
    assert s.kafka.bootstrap_servers == "kafka:9092"
    # The same app and topics as the workers.
    assert s.worker.app_id == settings_of(compose["services"]["worker"]["environment"],
                                          monkeypatch).worker.app_id
    assert s.trainer.metrics_host == "0.0.0.0" and s.trainer.metrics_port > 0
    assert str(s.trainer.metrics_port) in [str(p) for p in trainer["expose"]]
    assert s.trainer.device == "auto"
    job = scrape_jobs()["streamer-trainer"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": [f"trainer:{s.trainer.metrics_port}"]}]


def test_the_gpu_override_reserves_a_gpu_for_the_trainer(
        compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    override = yaml.safe_load((ROOT / "deploy" / "compose.gpu.yml").read_text())
    assert set(override["services"]) == {"trainer"}
    trainer = override["services"]["trainer"]
    (device,) = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    merged = {**compose["services"]["trainer"]["environment"], **trainer["environment"]}
    assert settings_of(merged, monkeypatch).trainer.device == "cuda"
    # The file is named by the command that uses it (docker-compose.yml's comment).
    assert "-f deploy/compose.gpu.yml" in (ROOT / "docker-compose.yml").read_text()


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

    from streamer.observability import TrainerMetrics

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/streamer.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bstreamer_[a-z_]+", e)}
    defined = TrainerMetrics().exposed_names()  # the workers' metrics and the trainer's
    assert used and used <= defined, used - defined
    # A query that picks a scrape job names one Prometheus has.
    jobs = {job for e in exprs for job in re.findall(r'job="([^"]+)"', e)}
    assert jobs <= set(scrape_jobs()), jobs - set(scrape_jobs())
    # The metrics are all on the dashboard.
    for name in ("streamer_reward_per_impression", "streamer_consumer_lag",
                 "streamer_dead_letters_total", "streamer_guardrail_alarm",
                 "streamer_trainer_promotions_total", "streamer_trainer_rejections_total",
                 "streamer_trainer_gate_margin",
                 "streamer_late_events_total", "streamer_reward_impressions_total"):
        assert name in used, name


def test_only_the_trainer_exposes_the_trainers_metrics() -> None:
    """Every worker replica is scraped: a trainer counter or gauge there would be a second,
    always-zero series of it."""
    from streamer.observability import Metrics, TrainerMetrics

    trainers = {"streamer_trainer_promotions_total", "streamer_trainer_rejections_total",
                "streamer_trainer_skips_total", "streamer_trainer_gate_margin"}
    assert trainers <= TrainerMetrics().exposed_names()
    assert not trainers & Metrics().exposed_names()
