"""``streamer ...``: the command line. Each command builds the settings once and hands plain
values down; long imports (faust, torch) happen inside the commands that need them."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
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


def main() -> None:
    """Entry point of the ``streamer`` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
