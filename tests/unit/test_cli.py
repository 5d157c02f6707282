"""The command line's help, as a user first sees it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamer.cli import app
from streamer.replay import InvalidRecord


def test_the_command_list_shows_each_commands_summary_as_flowing_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command's first docstring paragraph reads as one text in ``streamer --help``,
    not broken where the docstring's lines end (what Typer's "rich" help mode did)."""
    monkeypatch.setenv("COLUMNS", "400")  # wide enough for every summary on one line
    out = CliRunner().invoke(app, ["--help"]).output
    commands = [c for c in app.registered_commands if c.callback is not None]
    assert len(commands) >= 10
    for command in commands:
        summary = " ".join(inspect.getdoc(command.callback).split("\n\n")[0].split())
        assert any(summary in line for line in out.splitlines()), summary


def test_convert_detects_the_format_and_reports_bad_input_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    bakery = tmp_path / "b.csv"
    bakery.write_text("Date,Time,Transaction,Item\n2016-10-30,09:58:11,1,Bread\n")
    done = runner.invoke(app, ["convert", str(bakery), "-o", str(tmp_path / "b.parquet")])
    assert done.exit_code == 0, done.output
    assert "1 purchases" in done.output and (tmp_path / "b.parquet").exists()
    # ... and the Parquet it wrote is detected in turn.
    back = runner.invoke(app, ["convert", str(tmp_path / "b.parquet"), "-o",
                               str(tmp_path / "b.jsonl")])
    assert back.exit_code == 0 and '"event_id":"bk-1"' in (tmp_path / "b.jsonl").read_text()

    unknown = tmp_path / "other.csv"
    unknown.write_text("a,b\n1,2\n")
    for args, code, said in (
            ([str(unknown)], 2, "cannot tell the format"),  # a usage error, with the formats
            ([str(bakery), "--format", "xlsx"], 2, "'xlsx' is not one of"),
    ):
        result = runner.invoke(app, ["convert", *args, "-o", str(tmp_path / "o.jsonl")])
        assert result.exit_code == code, result.output
        assert said in " ".join(result.output.split()) and "parquet" in result.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event_id": "e1", "kind": "view"}\n')
    for command in (["convert", str(bad), "-o", str(tmp_path / "o.jsonl")],
                    ["evaluate", str(bad)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        assert f"{bad}:1: schema" in " ".join(result.output.split())
        assert not isinstance(result.exception, InvalidRecord)  # handled, not raised


def test_no_broker_at_the_configured_address_is_an_error_message_not_a_traceback(
        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from streamer.app.broker import free_port

    env = {**os.environ, "STREAMER__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
           "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "streamer", "policy", "list"], env=env,
                            capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "cannot reach Kafka at 127.0.0.1:" in out and "STREAMER__KAFKA__BOOTSTRAP_SERVERS" in out
    assert "Traceback" not in out and "Unclosed" not in out, out  # the client was stopped


def test_a_client_that_fails_to_start_is_stopped_again() -> None:
    import asyncio

    from streamer.app.kafka import start_client

    class Client:
        def __init__(self, closes: bool = False) -> None:
            self.stopped = False
            if closes:  # the admin client has close(), not stop()
                self.close = self._stop
            else:
                self.stop = self._stop

        async def start(self) -> None:
            raise ConnectionError("no broker")

        async def _stop(self) -> None:
            self.stopped = True

    for client in (Client(), Client(closes=True)):
        with pytest.raises(ConnectionError):
            asyncio.run(start_client(client))
        assert client.stopped


def test_the_trainer_stops_its_consumer_when_its_producer_fails_to_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import streamer.app.trainer as trainer
    from streamer.settings import Settings

    stopped: list[str] = []

    class Consumer:
        def __init__(self, **_: object) -> None: ...

        async def start(self) -> None: ...

        async def stop(self) -> None:
            stopped.append("consumer")

    class Producer(Consumer):
        async def start(self) -> None:
            raise ConnectionError("no broker")

        async def stop(self) -> None:
            stopped.append("producer")

    monkeypatch.setattr(trainer, "AIOKafkaConsumer", Consumer)
    monkeypatch.setattr(trainer, "AIOKafkaProducer", Producer)
    with pytest.raises(ConnectionError):
        asyncio.run(trainer.run_trainer(Settings()))
    assert sorted(stopped) == ["consumer", "producer"]
