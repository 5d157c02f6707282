"""Where settings come from: the environment and a ``.env``, and what is an error there."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamer.settings import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STREAMER__ variable of the calling shell, and a working directory without a .env."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("STREAMER__"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_a_dotenv_shared_with_other_tools_keeps_its_foreign_lines_to_itself(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text(
        "COMPOSE_PROJECT_NAME=shop\nDATABASE_URL=postgres://db/shop\nSTREAMER__OFFERS__TTL_S=60\n")
    assert Settings().offers.ttl_s == 60


@pytest.mark.parametrize("where", ["environment", ".env"])
@pytest.mark.parametrize(("variable", "named"), [
    ("STREAMER__OFFER__TTL_S", "STREAMER__OFFER__TTL_S"),      # misspelt section
    ("STREAMER__WOKER__WEB_PORT", "STREAMER__WOKER__WEB_PORT"),
    ("STREAMER__TTL_S", "STREAMER__TTL_S"),                    # no section at all
    ("STREAMER__OFFERS__TTL", "offers.ttl"),                   # misspelt field
])
def test_a_streamer_variable_that_names_no_setting_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str, variable: str, named: str,
) -> None:
    if where == ".env":
        (tmp_path / ".env").write_text(f"{variable}=60\n")
    else:
        monkeypatch.setenv(variable, "60")
    with pytest.raises(ValidationError) as e:
        Settings()
    assert named in str(e.value)
    if named.startswith("STREAMER__"):
        assert "KAFKA, TOPICS, WORKER, COPURCHASE, OFFERS" in str(e.value)


def test_valid_variables_from_both_places_still_apply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("STREAMER__OFFERS__TTL_S=60\nstreamer__worker__web_port=7001\n")
    monkeypatch.setenv("STREAMER__KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("STREAMER__OFFERS__MIN_CHANGE", "0.2")
    s = Settings()
    assert (s.offers.ttl_s, s.offers.min_change, s.worker.web_port, s.kafka.bootstrap_servers) \
        == (60, 0.2, 7001, "kafka:9092")


def test_an_unknown_variable_does_not_print_the_secrets_set_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMER__KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMER__KAFK__SASL_USERNAME", "me")
    with pytest.raises(ValidationError) as e:
        Settings()
    assert "STREAMER__KAFK__SASL_USERNAME" in str(e.value) and "hunter2" not in str(e.value)
