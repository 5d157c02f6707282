"""``streamer ...``: the command line. Each command builds the settings once and hands plain
values down; long imports (faust, torch) happen inside the commands that need them."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamer.settings import Settings

app = typer.Typer(
    help="Keeps a storefront's bundle offers up to date from the live Kafka event stream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=False)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds of simulated traffic.")] = 60.0,
    rate: Annotated[float | None, typer.Option(help="Simulated shopper sessions per second.")]
    = None,
    live: Annotated[bool, typer.Option(help="Show the live terminal view.")] = True,
) -> None:
    """Run everything on this machine: embedded broker, a worker and a simulated storefront,
    with a live view of events, offers and dead letters; stops all of it at the end."""
    from streamer.app.demo import run_demo

    settings = Settings()
    if rate is not None:
        settings = settings.model_copy(
            update={"demo": settings.demo.model_copy(update={"shoppers_per_s": rate})})
    result = asyncio.run(run_demo(settings, duration_s=duration, console=console,
                                  live_view=live))
    offers = result.worker_stats.get("streamer_offers_published_total", 0)
    if not offers:
        console.print("[red]no offers were published[/red]")
        raise typer.Exit(1)


@app.command()
def worker() -> None:
    """Run a worker against the Kafka in the settings (STREAMER__KAFKA__BOOTSTRAP_SERVERS...)."""
    from streamer.app.worker import run_worker

    run_worker(Settings())


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).")] = 9092,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until Ctrl-C."""
    from streamer.app.broker import EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(port=port) as b:
        console.print(f"broker ready on {b.bootstrap} (pid {b.pid}); Ctrl-C stops it")
        stop.wait()
    console.print("broker stopped")


@app.command()
def convert(
    path: Annotated[Path, typer.Argument(help="Input file.", exists=True, dir_okay=False)],
    format: Annotated[str, typer.Option("--format", "-f", help="Input format.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output JSONL path.")],
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
) -> None:
    """Convert a supported historical format to schema JSONL (one event per line)."""
    from streamer.replay.convert import convert as run_convert

    stats = run_convert(path, format, output, limit=limit)  # type: ignore[arg-type]
    console.print(stats.summary())


FORMAT_HELP = "Input format: jsonl, online-retail, taobao, bakery (default: detected)."


@app.command()
def replay(
    path: Annotated[Path, typer.Argument(help="Input file.", exists=True, dir_okay=False)],
    format: Annotated[str | None, typer.Option("--format", "-f", help=FORMAT_HELP)] = None,
    speed: Annotated[str, typer.Option(
        help="Replay speed: a multiple of real time (60 = an hour per minute) or 'max'.")]
    = "max",
    skip: Annotated[int, typer.Option(help="Skip the first N events (resume).")] = 0,
    since: Annotated[str | None, typer.Option(
        help="Skip events before this time (epoch ms or ISO date/time, UTC).")] = None,
    limit: Annotated[int | None, typer.Option(help="Read at most this many events.")] = None,
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
    from streamer.replay import detect_format, read_events
    from streamer.replay.pacing import parse_since, resume

    fmt = format or detect_format(path)
    factor = None if speed == "max" else float(speed)
    settings = Settings()
    events = list(resume(read_events(path, fmt, limit=limit),  # type: ignore[arg-type]
                         skip=skip, since_ms=parse_since(since)))
    with Progress(TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[when]}"), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("replay", total=len(events), when="")

        def advance(event: Event) -> None:
            when = datetime.fromtimestamp(event.ts / 1000, UTC)
            progress.update(task, advance=1, when=when.isoformat(timespec="minutes"))

        summary = asyncio.run(replay_events(settings, events, speed=factor, on_sent=advance))
    console.print(summary.text())
    if summary.errors:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``streamer`` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
