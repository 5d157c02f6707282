"""Presenting an evaluation: a rich table for the terminal and a PNG of hit rates by month.

Rendering only; nothing here computes a metric (see :mod:`streamer.replay.evaluate`).

>>> from streamer.replay.evaluate import evaluate
>>> from streamer.events import OrderLine, PurchaseEvent
>>> events = [PurchaseEvent(event_id=f"e{n}", ts=1_700_000_000_000 + n, user_id="u",
...     session_id="s", order_id=f"o{n}", items=[OrderLine(item_id=i, quantity=1,
...     unit_price=1.0) for i in ("tea", "cup", "milk")]) for n in range(3)]
>>> table = result_table(evaluate(events, dataset="toy", bootstrap=20))
>>> table.row_count, len(table.columns)
(12, 6)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table

from streamer.replay.evaluate import BundleMetrics, EvaluationResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["hit_rate_figure", "plot_hit_rates", "result_table"]


def _rate(metrics: BundleMetrics, key: str) -> str:
    value = getattr(metrics, key)
    lo, hi = metrics.ci95[key]
    interval = "-" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"  # NaN: no bootstrap
    return f"{value:.3f}\n{interval}"


def result_table(result: EvaluationResult) -> Table:
    """Two rows per method, 2-item and 3-item bundles: bundle and pair hit rates with 95%
    intervals, coverage and hit revenue. A rich renderable (``Console().print(table)``).

    It fits 80 columns, rich's width when the output is no terminal (a pipe, a CI log), with
    nothing cut: names are what tell ``cooc_count`` from ``cooc_lift``, and intervals go under
    their rates. A 2-item bundle has one partner, so its pair hit is its bundle hit, and says
    so. Hit revenue is "n/a" for data without prices: it would count units as money.
    """
    intervals = ("95% intervals: bootstrap over orders" if result.bootstrap > 0 else
                 "no intervals (--bootstrap 0)")
    revenue = ("hit revenue: what the orders paid for the items hit bundles offered, each once "
               "per order" if result.priced else "hit revenue n/a: the data has no prices")
    table = Table(
        title=(
            f"Prequential evaluation: {result.dataset} - {result.orders:,} orders, "
            f"{result.anchors:,} anchor occurrences, {result.seconds:.0f} s"
        ),
        caption=f"{intervals}; every rate over all anchor occurrences; {revenue}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    names = max((len(name) for name in result.methods), default=6)
    table.add_column("method", style="bold", no_wrap=True, min_width=names)
    table.add_column("bundle", no_wrap=True)
    for header in ("bundle hit\n[95%]", "pair hit\n[95%]", "coverage", "hit\nrevenue"):
        table.add_column(header, justify="right", no_wrap=True)
    for name, method in result.methods.items():
        for size, metrics in (("2-item", method.pair), ("3-item", method.triple)):
            table.add_row(
                name if size == "2-item" else "",
                size,
                _rate(metrics, "bundle_hit_rate"),
                "= bundle hit" if size == "2-item" else _rate(metrics, "pair_hit_rate"),
                f"{metrics.coverage:.3f}",
                f"{metrics.captured_revenue:,.0f}" if result.priced else "n/a",
                end_section=size == "3-item",
            )
    return table


def plot_hit_rates(result: EvaluationResult, path: str | Path) -> Path:
    """Write a PNG of every method's monthly bundle hit rate (2-item and 3-item panels, with
    95% bands) to ``path``; returns the path.

    Uses matplotlib's Agg canvas directly, not pyplot: no global backend switch, no window,
    safe in a worker or a test.
    """
    out = Path(path)
    hit_rate_figure(result).savefig(out, format="png", dpi=110)
    return out


def hit_rate_figure(result: EvaluationResult) -> Figure:
    """The figure :func:`plot_hit_rates` writes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, size, attr in ((axes[0], "2-item", "pair"), (axes[1], "3-item", "triple")):
        for name, method in result.methods.items():
            months = [g.label for g in method.monthly]
            rates = [getattr(g, attr).bundle_hit_rate for g in method.monthly]
            lows = [getattr(g, attr).ci95["bundle_hit_rate"][0] for g in method.monthly]
            highs = [getattr(g, attr).ci95["bundle_hit_rate"][1] for g in method.monthly]
            (line,) = ax.plot(months, rates, marker="o", markersize=3, label=name)
            ax.fill_between(months, lows, highs, color=line.get_color(), alpha=0.12)
        ax.set_title(f"{size} bundle hit rate by month")
        ax.set_xlabel("month (UTC)")
        ax.tick_params(axis="x", labelrotation=60)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)  # a rate; the bands of sparse months reached below 0
    axes[0].set_ylabel("bundle hit rate (all anchor occurrences)")
    axes[1].legend(loc="best", fontsize="small")
    fig.suptitle(f"{result.dataset}: {result.orders:,} orders, test-then-train")
    return fig
