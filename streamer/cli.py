"""``streamer ...``: the command line. Each command builds the settings once and hands plain
values down; long imports (faust, torch) happen inside the commands that need them."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import signal
import sys
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from streamer.replay.pacing import parse_since
from streamer.replay.readers import (
    FORMATS,
    InvalidRecord,
    ReaderFormat,
    ReaderStats,
    detect_format,
)
from streamer.settings import Settings

if TYPE_CHECKING:
    from rich.table import Table

    from streamer.app.reward_board import RewardBoard
    from streamer.events import InvalidEvent, RewardWindow

app = typer.Typer(
    help="Keeps a storefront's bundle offers up to date from the live Kafka event stream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Help as Markdown: the lines of a docstring's paragraph are joined in the command list
    # (in "rich" mode Typer keeps their line breaks there, mid-sentence).
    rich_markup_mode="markdown",
)
console = Console(stderr=False)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds of simulated traffic.")] = 240.0,
    rate: Annotated[float | None, typer.Option(help="Simulated shopper sessions per second.")]
    = None,
    live: Annotated[bool, typer.Option(help="Show the live terminal view.")] = True,
    trainer: Annotated[bool, typer.Option(help="Also run the trainer.")] = True,
) -> None:
    """Run everything on this machine: embedded broker, a worker, the trainer and a simulated
    storefront, with a live view of events, offers, dead letters and reward per policy
    version; stops all of it at the end."""
    from streamer.app.demo import run_demo

    settings = _settings()
    if rate is not None:
        settings = settings.model_copy(
            update={"demo": settings.demo.model_copy(update={"shoppers_per_s": rate})})
    result = asyncio.run(run_demo(settings, duration_s=duration, console=console,
                                  live_view=live, with_trainer=trainer))
    offers = result.worker_stats.get("streamer_offers_published_total", 0)
    if not offers:
        console.print("[red]no offers were published[/red]")
        raise typer.Exit(1)


@app.command()
def worker() -> None:
    """Run a worker against the Kafka in the settings (STREAMER__KAFKA__BOOTSTRAP_SERVERS...)."""
    from streamer.app.worker import run_worker

    run_worker(_settings())


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).")] = 9092,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until Ctrl-C."""
    from streamer.app.broker import EMBEDDED_FETCH_MAX_WAIT_MS, EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(port=port) as b:
        console.print(f"broker ready on {b.bootstrap} (pid {b.pid}); Ctrl-C stops it")
        # It holds a fetch of several partitions for the consumer's whole wait, data or not.
        console.print(f"workers against it: STREAMER__KAFKA__BOOTSTRAP_SERVERS={b.bootstrap} "
                      f"STREAMER__KAFKA__FETCH_MAX_WAIT_MS={EMBEDDED_FETCH_MAX_WAIT_MS}",
                      soft_wrap=True)
        stop.wait()
    console.print("broker stopped")


FORMAT_HELP = "Input format (default: detected from the file)."


def _format_of(path: Path, fmt: ReaderFormat | None) -> ReaderFormat:
    """``fmt``, else the format detected from ``path``; a usage error when it cannot be."""
    if fmt is not None:
        return fmt
    try:
        return detect_format(path)
    except ValueError as e:
        raise typer.BadParameter(f"{e}: one of {', '.join(FORMATS)}",
                                 param_hint="'--format'") from e


def _settings() -> Settings:
    """The settings from the environment and ``.env``; a variable that is misspelt or out of
    range ends the command with what is wrong with which (status 2, as a bad option), not a
    traceback. Values are not echoed: one may be a secret."""
    try:
        return Settings()
    except ValidationError as e:
        for error in e.errors(include_url=False):
            where = "__".join(str(part).upper() for part in error["loc"])
            name = f"STREAMER__{where}: " if where else ""
            message = error["msg"].removeprefix("Value error, ")  # a validator's own words
            console.print(f"[red]{escape(name + message)}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file that does not hold what its format says, or cannot be read or written, ends the
    command with one line (file, line or row if known, reason) and status 1, not a traceback.

    A gzip cut short raises EOFError, which click would turn into a bare "Aborted!".
    """
    try:
        yield
    except InvalidRecord as e:
        _fail(str(e))
    except OSError as e:  # also gzip.BadGzipFile; the file named is the one that failed
        _fail(f"{e.filename or path}: {e.strerror or e}")
    except (EOFError, zlib.error) as e:
        _fail(f"{path}: cut short or corrupt: {e}")
    except (csv.Error, UnicodeError) as e:
        _fail(f"{path}: unreadable: {e}")


def _fail(message: str) -> None:
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
    raise typer.Exit(1)


def _check_speed(value: str) -> str:
    if value != "max":
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not (math.isfinite(factor) and factor > 0):
            raise typer.BadParameter(f"a positive multiple of real time or 'max', not {value!r}")
    return value


def _check_since(value: str | None) -> str | None:
    try:
        parse_since(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    return value


def _print_reading(stats: ReaderStats, fmt: ReaderFormat) -> None:
    """The reader's summary, and in plain words what it cut or that there was nothing; a file
    whose rows were all skipped ends the command (status 1): it is most likely not ``fmt``."""
    console.print(escape(stats.summary()), soft_wrap=True)
    if note := stats.cut_note():
        console.print(f"[yellow]{escape(note)}[/yellow]", soft_wrap=True)
    if stats.rows == 0:
        console.print("[yellow]the file has no data rows[/yellow]")
    elif stats.events == 0:
        _fail(f"no events: every row was skipped; is the file really {fmt}? (--format: one of "
              f"{', '.join(FORMATS)})")


def _utc(ts: int | None) -> str:
    return "?" if ts is None else datetime.fromtimestamp(ts / 1000, UTC).isoformat(
        timespec="seconds")


def _check_output(value: Path | None) -> Path | None:
    # Before the work, not after: an evaluation's results lost for a typo in a directory.
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value} is a directory")
    if value is not None and not value.parent.is_dir():
        raise typer.BadParameter(f"no directory {value.parent} to write {value.name} in")
    return value


def _check_png(value: Path | None) -> Path | None:
    # The plot is PNG bytes whatever the name says: a name that says otherwise misleads.
    if value is not None and value.suffix.lower() != ".png":
        raise typer.BadParameter(f"the plot is a PNG: name it .png, not {value.name}")
    return _check_output(value)


def _check_converted(value: Path) -> Path:
    from streamer.replay.convert import OUTPUT_SUFFIXES

    if not value.name.lower().endswith(OUTPUT_SUFFIXES):
        raise typer.BadParameter(f"{value.name}: one of {', '.join(OUTPUT_SUFFIXES)}")
    checked = _check_output(value)
    assert checked is not None
    return checked


def _check_distinct(path: Path, **outputs: Path | None) -> None:
    """Refuse an output that is the command's input or another of its outputs (by resolved
    path, so ``./x`` and ``x`` are one): either would overwrite data the user keeps. Options
    are named by their keyword, ``json_path`` for ``--json``."""
    seen = {path.resolve(): "the input file"}
    for name, output in outputs.items():
        if output is None:
            continue
        option = "--" + name.removesuffix("_path").replace("_", "-")
        where = output.resolve()
        if where in seen:
            raise typer.BadParameter(f"{output} is {seen[where]}", param_hint=f"'{option}'")
        seen[where] = f"the {option} file"


@app.command()
def convert(
    path: Annotated[Path, typer.Argument(help="Input file.", exists=True, dir_okay=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Output path: schema JSONL (.jsonl, .jsonl.gz) or .parquet.",
        callback=_check_converted)],
    format: Annotated[ReaderFormat | None, typer.Option("--format", "-f", help=FORMAT_HELP)]
    = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Stop after this many events.")]
    = None,
) -> None:
    """Convert a supported historical format to schema JSONL (one event per line) or
    Parquet (one event per row)."""
    from streamer.replay.convert import NoEvents
    from streamer.replay.convert import convert as run_convert

    _check_distinct(path, output=output)
    fmt = _format_of(path, format)
    with _reading(path):
        try:
            stats = run_convert(path, fmt, output, limit=limit)
        except NoEvents as e:
            stats = e.stats
    _print_reading(stats, fmt)


@app.command()
def replay(
    path: Annotated[Path, typer.Argument(help="Input file.", exists=True, dir_okay=False)],
    format: Annotated[ReaderFormat | None, typer.Option("--format", "-f", help=FORMAT_HELP)]
    = None,
    speed: Annotated[str, typer.Option(
        help="Replay speed: a multiple of real time (60 = an hour per minute) or 'max'.",
        callback=_check_speed)]
    = "max",
    skip: Annotated[int, typer.Option(min=0, help="Skip the first N events (resume).")] = 0,
    since: Annotated[str | None, typer.Option(
        help="Skip events before this time (epoch ms or ISO date/time, UTC).",
        callback=_check_since)] = None,
    limit: Annotated[int | None, typer.Option(
        min=0, help="Send at most this many events, counted after --skip and --since (so "
        "`--skip 1000 --limit 1000` sends events 1,001 to 2,000).")] = None,
) -> None:
    """Produce historical events to the clicks / purchases topics in event-time order, with
    their original timestamps, at a chosen speed; shows progress and a summary."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from streamer.app.replay import replay_events
    from streamer.events import Event
    from streamer.replay import read_events
    from streamer.replay.pacing import resume

    factor = None if speed == "max" else float(speed)
    settings = _settings()
    fmt = _format_of(path, format)
    stats = ReaderStats()
    with _reading(path):
        events = list(resume(read_events(path, fmt, stats=stats),
                             skip=skip, since_ms=parse_since(since), limit=limit))
    if limit == 0:
        return
    _print_reading(stats, fmt)
    if not events and stats.events:  # --skip or --since left nothing: say where the data is
        _fail(f"nothing to replay: {'--since ' + since if since is not None else '--skip'} "
              f"leaves none of the {stats.events:,} events, from {_utc(stats.first_ts)} to "
              f"{_utc(stats.last_ts)} (UTC)")
    if not events:
        _fail("nothing to replay")
    with Progress(TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[when]}"), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("replay", total=len(events), when="")

        def advance(event: Event) -> None:
            when = datetime.fromtimestamp(event.ts / 1000, UTC)
            progress.update(task, advance=1, when=when.isoformat(timespec="minutes"))

        summary = asyncio.run(replay_events(settings, events, speed=factor, on_sent=advance))
    console.print(summary.text())
    if summary.undelivered is not None:
        # --skip counts file positions before --since filters; with --since, resume by time
        # (events of that instant already delivered are de-duplicated downstream).
        again = (f"--since {summary.undelivered_ts}" if since is not None
                 else f"--skip {skip + summary.undelivered}")
        if limit is not None:
            # Resumed --since that instant, the events of it delivered already come again:
            # the limit counts them too.
            again_too = (0 if since is None else
                         sum(e.ts == summary.undelivered_ts
                             for e in events[:summary.undelivered]))
            again += f" --limit {limit - summary.undelivered + again_too}"
        console.print(f"to resume: streamer replay {escape(str(path))} {again}", soft_wrap=True)
    if summary.interrupted:  # Ctrl-C: the status a shell gives an interrupted command
        raise typer.Exit(130)
    if summary.errors:
        raise typer.Exit(1)


@app.command()
def evaluate(
    path: Annotated[Path, typer.Argument(help="Input file.", exists=True, dir_okay=False)],
    format: Annotated[ReaderFormat | None, typer.Option("--format", "-f", help=FORMAT_HELP)]
    = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Write the results here.", callback=_check_output)] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Write the hit-rate-over-time plot (a .png).", callback=_check_png)] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Read at most this many events.")]
    = None,
    bootstrap: Annotated[int, typer.Option(
        min=0, help="Bootstrap replicates for the intervals.")] = 1000,
    co_view_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of a session's co-viewed items as a pseudo-order (0: off).")] = 0.0,
    co_cart_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of a session's co-carted items as a pseudo-order (0: off).")] = 0.0,
) -> None:
    """Prequential evaluation in event-time order, no Kafka: for every order of two or more
    items and every anchor in it, was the offer live just before the order bought with it?
    streamer against popularity, co-count, lift, frozen-rules and random baselines."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from streamer.replay.evaluate import NothingToEvaluate, run_evaluation, with_engine_config
    from streamer.replay.report import result_table

    _check_distinct(path, json_path=json_path, plot=plot)
    fmt = _format_of(path, format)
    stats = ReaderStats()
    with _reading(path), Progress("[bold]evaluate", BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("evaluate", total=None)
        try:
            result = run_evaluation(
                path, fmt, json_path=json_path, plot_path=plot,
                limit=limit, bootstrap=bootstrap, stats=stats,
                config=with_engine_config(co_view_weight=co_view_weight,
                                          co_cart_weight=co_cart_weight),
                progress=lambda done, total: bar.update(task, completed=done, total=total))
        except NothingToEvaluate as e:
            bar.stop()
            _print_reading(stats, fmt)  # no events: says why
            _fail(f"{e} (nothing written)")
    console.print(result_table(result))
    for label, target in (("results", json_path), ("plot", plot)):
        if target is not None:
            console.print(f"{label} written to {target}")


@app.command()
def simulate(
    duration: Annotated[float, typer.Option(help="Seconds of simulated traffic.")] = 240.0,
    rate: Annotated[float | None, typer.Option(help="Simulated sessions per second.")] = None,
    trainer: Annotated[bool, typer.Option(help="Also run the trainer.")] = True,
) -> None:
    """Closed-loop simulation through Kafka: embedded broker, worker, trainer and a simulated
    storefront with a hidden ground truth; reward and regret against the oracle per version."""
    from streamer.app.simulate import run_simulation

    settings = _settings()
    if rate is not None:
        settings = settings.model_copy(
            update={"demo": settings.demo.model_copy(update={"shoppers_per_s": rate})})
    report = asyncio.run(run_simulation(settings, duration_s=duration, console=console,
                                        with_trainer=trainer))
    if len(report) == 0:
        raise typer.Exit(1)


@app.command()
def trainer() -> None:
    """Run the trainer: consume feedback, fine-tune the torch policy (GPU if present, else
    CPU with capped threads), publish promoted versions to policy-updates."""
    from streamer.app.trainer import main as run_trainer

    run_trainer(_settings())


policy_app = typer.Typer(help="Policy versions on policy-updates: list them, roll back.",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("list")
def policy_list() -> None:
    """Versions published on policy-updates with their metadata; marks the live one."""
    from rich import box
    from rich.table import Table

    from streamer.app.kafka import MissingTopicError
    from streamer.app.policy_updates import no_versions, read_versions

    settings = _settings()
    missing: str | None = None  # the topic, when there is none yet
    try:
        versions = asyncio.run(read_versions(settings))
    except MissingTopicError as e:  # a fresh broker: workers start on v0, and so it is live
        versions = no_versions(settings)
        missing = e.topic
    # 80 columns is rich's width for a pipe: names are what `policy rollback` takes, never cut
    # (v0-greedy read "v0-gree…"), and the rest wraps between words.
    table = Table(title="policy versions (oldest first)", box=box.SIMPLE_HEAD, show_edge=False,
                  padding=0)
    table.add_column("live")
    table.add_column("version", no_wrap=True)
    table.add_column("parent", no_wrap=True)
    for column, longest_word in (("estimate [interval]", 8), ("live estimate", 8),
                                 ("train size", 6), ("trained on", 7)):
        table.add_column(column, min_width=longest_word)  # wrapped, never cut
    for v in versions.versions():
        m = v.metadata
        interval = m.get("interval") or [None, None]
        estimate = ("" if m.get("estimate") is None else
                    f"{m['estimate']:.4g} [{_fmt(interval[0])}, {_fmt(interval[1])}]")
        trained = str(m.get("device", ""))
        if m.get("seconds") is not None:
            trained += f" {_fmt(m['seconds'])} s"
        table.add_row("*" if v.live else "", v.version, str(m.get("parent") or ""), estimate,
                      _fmt(m.get("live_estimate")), str(m.get("train_size", "")), trained)
    console.print(table)
    if missing is not None:
        console.print(f"no topic {escape(missing)} at {escape(settings.kafka.bootstrap_servers)}"
                      f" yet: nothing was published, {versions.live_version} is live",
                      soft_wrap=True)
    if versions.rejected:
        console.print(f"{versions.rejected} record(s) refused (untrusted weights, features "
                      "workers do not compute, or rollbacks to unknown versions)")


def _fmt(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) else ""


@policy_app.command("rollback")
def policy_rollback(
    version: Annotated[str, typer.Argument(help="The version workers return to.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the record).")] = "",
) -> None:
    """Publish a rollback record: every worker makes VERSION live again."""
    from streamer.app.policy_updates import publish_rollback

    try:
        published = asyncio.run(publish_rollback(_settings(), version, reason=reason))
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from e
    console.print(f"rollback to {version} published" if published else
                  f"{version} is live already: nothing changes, nothing published")


def _windows_table(board: RewardBoard, title: str) -> Table:
    """The newest window per (version, size) of ``board`` as a rich table; the caption counts
    the windows read and the messages skipped as no window (:meth:`RewardBoard.skip`)."""
    from rich.table import Table

    from streamer.app.reward_board import skipped_note
    from streamer.app.reward_tracking import spec_label

    table = Table(title=title)
    for name in ("version", "window", "ends (UTC)", "impressions", "clicks", "conversions",
                 "revenue", "reward / impression", "95% interval"):
        table.add_column(name, justify="left" if name in ("version", "window") else "right",
                         no_wrap=name == "version")  # a name to type, never cut
    for size in board.sizes():
        for version in board.versions():
            w = board.latest(version, size)
            if w is None:
                continue
            ends = datetime.fromtimestamp(w.window_end / 1000, UTC).strftime("%H:%M:%S")
            table.add_row(version, spec_label(size), ends, f"{w.impressions:,}",
                          f"{w.offer_clicks:,}", f"{w.conversions:,}", f"{w.revenue:,.2f}",
                          f"{w.reward_rate:.4f}", f"[{w.ci95[0]:.4f}, {w.ci95[1]:.4f}]")
    guard = board.guardrails()
    skipped = skipped_note(board.invalid)
    table.caption = (f"SRM: {guard.srm_status} · reward regression: "
                     f"{'ALARM' if guard.regression_alarm else 'ok'} · {board.received} windows"
                     + (f" · {skipped}" if skipped else ""))
    return table


@app.command()
def rewards(
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep reading and refresh the table live (Ctrl-C stops).")]
    = False,
    jsonl: Annotated[Path | None, typer.Option(
        help="Also write every window read to this JSONL file.", callback=_check_output)]
    = None,
) -> None:
    """Show the newest reward windows per policy version from the rewards topic (latest
    window per version and size, with 95% intervals and the guardrails)."""
    import msgspec
    from rich.live import Live

    from streamer.app.reward_board import RewardBoard, read_reward_windows

    settings = _settings()
    topic = settings.topics.rewards
    board = RewardBoard(min_impressions=1, min_conversions=0)
    out = jsonl.open("wb") if jsonl else None
    try:
        if not follow:
            windows = asyncio.run(read_reward_windows(settings.kafka, topic, follow=False,
                                                      on_invalid=board.skip))
            for w in windows:
                if out:
                    out.write(msgspec.json.encode(w) + b"\n")
            board.add_all(windows)
            console.print(_windows_table(board, f"rewards ({topic})"))
            return
        with Live(_windows_table(board, f"rewards ({topic}) — following"), console=console,
                  auto_refresh=False) as live:

            def on_batch(batch: list[RewardWindow]) -> None:
                board.add_all(batch)
                for w in batch:
                    if out:
                        out.write(msgspec.json.encode(w) + b"\n")
                        out.flush()
                live.update(_windows_table(board, f"rewards ({topic}) — following"),
                            refresh=True)

            asyncio.run(read_reward_windows(settings.kafka, topic, follow=True,
                                            on_batch=on_batch, on_invalid=board.skip))
    finally:
        if out:
            out.close()


@app.command()
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.",
                                         callback=_check_output)]
    = Path("rewards-report.html"),
    input: Annotated[Path | None, typer.Option(
        "--input", "-i", help="RewardWindows as JSONL (default: read the rewards topic).",
        exists=True, dir_okay=False)] = None,
    title: Annotated[str, typer.Option(help="Report title.")] = "streamer rewards",
) -> None:
    """Write an HTML report with plots (reward per impression per policy version over time,
    impressions, totals, guardrails) from the rewards topic or a JSONL of RewardWindows."""
    from streamer.app.report import render_report
    from streamer.app.reward_board import read_jsonl, read_reward_windows, skipped_note

    skipped: list[InvalidEvent] = []  # messages of the topic that are no window
    if input is not None:
        _check_distinct(input, output=output)
        with _reading(input):
            try:
                windows = read_jsonl(input.read_text(encoding="utf-8").splitlines())
            except ValueError as e:  # (UnicodeDecodeError is one: _reading words it)
                if isinstance(e, UnicodeError):
                    raise
                _fail(f"{input}: {e} (a JSONL of RewardWindows, as `streamer rewards "
                      "--jsonl` writes)")
    else:
        settings = _settings()
        windows = asyncio.run(read_reward_windows(settings.kafka, settings.topics.rewards,
                                                  follow=False, on_invalid=skipped.append))
    output.write_text(render_report(windows, title=title, skipped=len(skipped)))
    note = skipped_note(len(skipped))
    console.print(f"{len(windows)} windows -> {output}" + (f" ({note})" if note else ""))


def main() -> None:
    """Entry point of the ``streamer`` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        # No broker at the configured address, or topics that do not fit, are settings to
        # fix, not bugs: say so, without a traceback.
        from aiokafka.errors import KafkaConnectionError

        from streamer.app.kafka import MissingTopicError
        from streamer.app.topics import TopicSetupError

        if isinstance(e, TopicSetupError):  # says what to fix, and how
            console.print(f"[red]{escape(str(e))}[/red]", soft_wrap=True)
            sys.exit(1)
        if isinstance(e, MissingTopicError):  # a fresh broker: no worker has created it
            bootstrap = _settings().kafka.bootstrap_servers
            Console(stderr=True).print(
                f"[red]no topic {escape(e.topic)} at {escape(bootstrap)}: start `streamer "
                "worker` against it first (it creates streamer's topics)[/red]", soft_wrap=True)
            sys.exit(1)
        if not isinstance(e, KafkaConnectionError):
            raise
        bootstrap = _settings().kafka.bootstrap_servers
        console.print(f"[red]cannot reach Kafka at {escape(bootstrap)}: {escape(str(e))}[/red]\n"
                      "Set STREAMER__KAFKA__BOOTSTRAP_SERVERS to your brokers, or run "
                      "`streamer broker` for a local one (`streamer demo` starts its own).")
        sys.exit(1)


if __name__ == "__main__":
    main()
