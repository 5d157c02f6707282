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


BAKERY = ("Date,Time,Transaction,Item\n"
          + "".join(f"2016-10-30,{9 + n // 60:02d}:{n % 60:02d}:00,{n},Bread\n" for n in range(10)))


@pytest.mark.parametrize(("args", "option"), [
    (["replay", "{f}", "--speed", "10x"], "--speed"),
    (["replay", "{f}", "--speed", "0"], "--speed"),
    (["replay", "{f}", "--speed", "nan"], "--speed"),
    (["replay", "{f}", "--since", "yesterday"], "--since"),
    (["replay", "{f}", "--skip", "-1"], "--skip"),
    (["replay", "{f}", "--limit", "-1"], "--limit"),
    (["evaluate", "{f}", "--limit", "-1"], "--limit"),
    (["evaluate", "{f}", "--json", "{tmp}/no/such/dir/r.json"], "--json"),
    (["convert", "{f}", "-o", "{tmp}/o.jsonl", "--limit", "-1"], "--limit"),
    (["convert", "{f}", "-o", "{f}"], "--output"),
    (["convert", "{f}", "-o", "{tmp}/no/such/dir/o.jsonl"], "--output"),
    (["convert", "{f}", "-o", "{tmp}"], "--output"),
    (["convert", "{f}", "-o", "{tmp}/o.csv"], "--output"),  # it would hold JSONL
    (["evaluate", "{f}", "--json", "{f}"], "--json"),
    (["evaluate", "{f}", "--plot", "{tmp}/../{tmp.name}/b.png", "--json", "{tmp}/b.png"],
     "--plot"),  # one file for both, however spelt
    (["evaluate", "{f}", "--plot", "{tmp}/p.pdf"], "--plot"),  # it would hold PNG bytes
    (["report", "-i", "{f}", "-o", "{tmp}/no/such/dir/r.html"], "--output"),
    (["report", "-i", "{f}", "-o", "{f}"], "--output"),
    (["rewards", "--jsonl", "{tmp}/no/such/dir/w.jsonl"], "--jsonl"),
])
def test_a_bad_option_value_is_a_usage_error_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], option: str) -> None:
    """Status 2 and the option named, as click does for a value of the wrong type; never a
    traceback, and the input is left as it was."""
    monkeypatch.setenv("COLUMNS", "200")
    f = tmp_path / "b.csv"
    f.write_text(BAKERY)
    result = CliRunner().invoke(
        app, [a.format(f=f, tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert f.read_text() == BAKERY


def test_a_file_cut_short_or_unwritable_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    monkeypatch.setenv("COLUMNS", "400")
    whole = gzip.compress(BAKERY.encode() * 500)  # a download interrupted half-way
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    runner = CliRunner()
    for command in (["evaluate", str(cut), "-f", "bakery"],
                    ["convert", str(cut), "-f", "bakery", "-o", str(tmp_path / "o.jsonl")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines()[-1] == (  # after evaluate's progress bar
            f"{cut}: cut short or corrupt: Compressed file ended before the end-of-stream "
            "marker was reached"), result.output
    assert not (tmp_path / "o.jsonl").exists()

    import importlib

    def unwritable(*_: object, **__: object) -> None:  # as root, chmod cannot make one
        raise PermissionError(13, "Permission denied", str(tmp_path / ".o.jsonl.partial"))

    # (streamer.replay.convert is the function, the package re-exports it)
    monkeypatch.setattr(importlib.import_module("streamer.replay.convert"), "convert",
                        unwritable)
    src = tmp_path / "b.csv"
    src.write_text(BAKERY)
    result = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"{tmp_path / '.o.jsonl.partial'}: Permission denied"


def test_replay_limit_counts_the_events_left_after_skip_and_since(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--skip 3 --limit 4`` sends events 4 to 7, as OFFSET/LIMIT would: the way to resume a
    replay of ``--limit N`` is ``--skip N`` with the same limit."""
    import streamer.app.replay as replay

    sent: list[list[str]] = []

    async def fake_replay(settings: object, events: list[object], **_: object) -> object:
        sent.append([e.event_id for e in events])  # type: ignore[attr-defined]
        return replay.ReplaySummary()

    monkeypatch.setattr(replay, "replay_events", fake_replay)
    f = tmp_path / "b.csv"
    f.write_text(BAKERY)
    runner = CliRunner()
    for extra in (["--skip", "3", "--limit", "4"],
                  ["--since", "2016-10-30T09:02:00", "--limit", "4"],
                  ["--skip", "3", "--since", "2016-10-30T09:05:00", "--limit", "4"]):
        result = runner.invoke(app, ["replay", str(f), *extra])
        assert result.exit_code == 0, result.output
    assert sent == [[f"bk-{n}" for n in range(3, 7)], [f"bk-{n}" for n in range(2, 6)],
                    [f"bk-{n}" for n in range(5, 9)]]


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("STREAMER__OFFER__TTL_S", "60", "unknown setting STREAMER__OFFER__TTL_S"),
    ("STREAMER__OFFERS__TTL", "60", "STREAMER__OFFERS__TTL: Extra inputs are not permitted"),
    ("STREAMER__WORKER__WEB_PORT", "70000", "STREAMER__WORKER__WEB_PORT: Input should be less"),
])
def test_a_bad_setting_is_one_line_naming_the_variable_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv(variable, value)
    done = CliRunner().invoke(app, ["worker"])
    assert done.exit_code == 2, done.output
    assert says in done.output and "Traceback" not in done.output
    assert value not in done.output.replace(variable, "")  # values are not echoed


def test_replay_with_undelivered_events_says_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first event not acknowledged is where a resumed replay starts: ``--skip`` counts
    from the file's start (the original skip added), ``--limit`` what is left of the limit."""
    import streamer.app.replay as replay

    async def fake_replay(settings: object, events: list[object], **_: object) -> object:
        return replay.ReplaySummary(sent={"clicks": 1}, errors=1, undelivered=1,
                                    undelivered_ts=events[1].ts)  # type: ignore[attr-defined]

    monkeypatch.setattr(replay, "replay_events", fake_replay)
    f = tmp_path / "b.csv"
    f.write_text(BAKERY)
    result = CliRunner().invoke(app, ["replay", str(f), "--skip", "3", "--limit", "4"])
    assert result.exit_code == 1, result.output
    assert f"to resume: streamer replay {f} --skip 4 --limit 3" in result.output


def test_a_replay_resumed_since_an_instant_counts_that_instants_events_in_its_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumed ``--since`` the first undelivered event's time, the events of that instant
    delivered already come again: the limit counts them too (events at 10, 20, 20, 20, 30,
    40; the third undelivered: the resumed run sends 20, 20, 20, 30 and 40)."""
    import msgspec

    import streamer.app.replay as replay
    from streamer.events import OrderLine, PurchaseEvent

    async def fake_replay(settings: object, events: list[object], **_: object) -> object:
        return replay.ReplaySummary(sent={"purchases": 2}, errors=1, undelivered=2,
                                    undelivered_ts=events[2].ts)  # type: ignore[attr-defined]

    monkeypatch.setattr(replay, "replay_events", fake_replay)
    monkeypatch.setenv("COLUMNS", "400")
    base = 1_700_000_000_000
    f = tmp_path / "p.jsonl"
    f.write_bytes(b"\n".join(msgspec.json.encode(PurchaseEvent(
        event_id=f"e{k}", ts=base + ts, user_id="u", session_id=f"s{k}", order_id=f"o{k}",
        items=[OrderLine(item_id="tea", quantity=1, unit_price=1.0)]))
        for k, ts in enumerate([10, 20, 20, 20, 30, 40])) + b"\n")
    since = str(base)
    result = CliRunner().invoke(app, ["replay", str(f), "--since", since, "--limit", "6"])
    assert result.exit_code == 1, result.output
    assert f"--since {base + 20} --limit 5" in result.output


def test_report_of_a_file_that_holds_no_reward_windows_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id": "e1", "kind": "view"}\n')
    binary = tmp_path / "w.parquet"
    binary.write_bytes(b"PAR1\xff\xfe\x00")
    for source, says in ((events, f"{events}: line 1: not a RewardWindow"),
                         (binary, f"{binary}: unreadable")):
        result = CliRunner().invoke(app, ["report", "-i", str(source),
                                          "-o", str(tmp_path / "r.html")])
        assert result.exit_code == 1, result.output
        assert result.output.startswith(says) and len(result.output.splitlines()) == 1
        assert not (tmp_path / "r.html").exists()


def fake_replay_recording(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """``replay_events`` replaced by one that acknowledges everything: the event ids per call."""
    import streamer.app.replay as replay

    sent: list[list[str]] = []

    async def fake_replay(settings: object, events: list[object], **_: object) -> object:
        sent.append([e.event_id for e in events])  # type: ignore[attr-defined]
        return replay.ReplaySummary(sent={"purchases": len(events)})

    monkeypatch.setattr(replay, "replay_events", fake_replay)
    return sent


def test_replay_says_what_the_reader_skipped_and_which_orders_it_cut(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``convert`` does: an order of more than 200 items goes out as its first 200, which
    the user must hear of in words (a count of skipped rows hid 3.9% of a data set's revenue)."""
    monkeypatch.setenv("COLUMNS", "400")
    sent = fake_replay_recording(monkeypatch)
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    rows = "".join(f"536999,{code},X,1,2010-12-02 10:00:00,1.0,12345.0,UK\n" for code in range(203))
    big = tmp_path / "retail.csv"
    big.write_text(header + rows + "C537000,1,X,-1,2010-12-02 11:00:00,1.0,12345.0,UK\n")
    runner = CliRunner()
    for command in (["replay", str(big)], ["convert", str(big), "-o", str(tmp_path / "o.jsonl")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        assert ("204 rows -> 1 events (0 clicks, 1 purchases, 200 order lines); skipped rows: "
                "cancellation 1, over_line_limit 3") in said
        assert ("1 orders over 200 lines were cut to their first 200: the wire format's limit; "
                "`streamer evaluate` the original file for whole orders") in said
    assert sent == [["or-536999"]]


def test_a_file_that_gives_no_events_fails_with_the_readers_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong --format (every row malformed) or a file without data rows is no success:
    status 1, what the reader made of it, and nothing written or sent."""
    monkeypatch.setenv("COLUMNS", "400")
    sent = fake_replay_recording(monkeypatch)
    bakery = tmp_path / "b.csv"
    bakery.write_text(BAKERY)
    empty = tmp_path / "empty.csv"
    empty.write_text("Date,Time,Transaction,Item\n")
    out, plot = tmp_path / "o.jsonl", tmp_path / "p.png"
    runner = CliRunner()
    for args, says in (
            (["convert", str(bakery), "-f", "taobao", "-o", str(out)],
             "11 rows -> 0 events (0 clicks, 0 purchases, 0 order lines); skipped rows: "
             "malformed 11 no events: every row was skipped; is the file really taobao?"),
            (["replay", str(bakery), "-f", "taobao"], "skipped rows: malformed 11 no events"),
            (["replay", str(empty)], "the file has no data rows nothing to replay"),
            (["evaluate", str(empty), "--plot", str(plot)],
             "the file has no data rows"),
            (["evaluate", str(bakery), "-f", "taobao", "--plot", str(plot)],
             "malformed 11 no events: every row was skipped"),
            # Ten orders of one item each: no rate to compute, rather than a table of zeros.
            (["evaluate", str(bakery), "--plot", str(plot), "--json", str(tmp_path / "r.json")],
             f"{bakery}: no order of two or more items among its 10 orders: nothing to "
             "evaluate (nothing written)"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert says in " ".join(result.output.split()), result.output
    assert not out.exists() and not plot.exists() and not (tmp_path / "r.json").exists()
    assert sent == []
    # An empty file converts to an empty one, with a word on why it is empty.
    result = runner.invoke(app, ["convert", str(empty), "-o", str(out)])
    assert result.exit_code == 0 and "the file has no data rows" in result.output
    assert out.read_text() == ""


@pytest.mark.parametrize(("since", "code", "says"), [
    ("2017", 2, "2017 is not epoch milliseconds since 2000 (13 digits): did you mean "
     "2017-01-01?"),
    ("20161030", 2, "did you mean 2016-10-30?"),
    ("2030-01-01", 1, "nothing to replay: --since 2030-01-01 leaves none of the 10 events, from "
     "2016-10-30T09:00:00+00:00 to 2016-10-30T09:09:00+00:00 (UTC)"),
])
def test_replay_since_a_year_or_past_the_end_of_the_data_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since: str, code: int, says: str) -> None:
    """``--since 2017`` read as epoch ms is 1970 (everything replayed); a --since past the data
    sent nothing and exited 0."""
    monkeypatch.setenv("COLUMNS", "400")
    sent = fake_replay_recording(monkeypatch)
    f = tmp_path / "b.csv"
    f.write_text(BAKERY)
    result = CliRunner().invoke(app, ["replay", str(f), "--since", since])
    assert result.exit_code == code, result.output
    assert says in " ".join(result.output.split()), result.output
    assert sent == []


def test_policy_list_at_80_columns_shows_version_names_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The names are what ``policy rollback`` takes; at 80 columns (a pipe) they were cut."""
    import streamer.app.policy_updates as policy_updates
    from streamer.policy import PolicyVersions
    from streamer.policy.registry import VersionInfo

    monkeypatch.setenv("COLUMNS", "80")
    versions = PolicyVersions(base_version="v0-greedy")
    versions.versions = lambda: [  # type: ignore[method-assign]
        VersionInfo("v0-greedy", {"kind": "base"}, False),
        VersionInfo("torch-0a1b2c3d4e5f", {
            "parent": "torch-9f8e7d6c5b4a", "estimate": 0.123456, "interval": [0.1, 0.15],
            "live_estimate": 0.0987, "train_size": 123456, "device": "cpu", "seconds": 12.5},
            True)]

    async def read(_: object) -> PolicyVersions:
        return versions

    monkeypatch.setattr(policy_updates, "read_versions", read)
    result = CliRunner().invoke(app, ["policy", "list"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    for name in ("v0-greedy", "torch-0a1b2c3d4e5f", "torch-9f8e7d6c5b4a"):
        assert f" {name} " in result.output, result.output


def test_an_interrupted_replay_prints_its_summary_and_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.app.replay as replay

    async def interrupted(settings: object, events: list[object], **_: object) -> object:
        return replay.ReplaySummary(sent={"purchases": 2}, interrupted=True, undelivered=2,
                                    undelivered_ts=events[2].ts)  # type: ignore[attr-defined]

    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(replay, "replay_events", interrupted)
    f = tmp_path / "b.csv"
    f.write_text(BAKERY)
    result = CliRunner().invoke(app, ["replay", str(f), "--skip", "3"])
    assert result.exit_code == 130, result.output
    assert "interrupted: 2 events" in result.output
    assert f"to resume: streamer replay {f} --skip 5" in result.output
