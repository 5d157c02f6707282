"""Presenting an evaluation: a rich table for the terminal and a PNG of hit rates by month.

Rendering only; nothing here computes a metric (see :mod:`streamer.replay.evaluate`).

>>> from streamer.replay.evaluate import evaluate
>>> from streamer.events import OrderLine, PurchaseEvent
>>> events = [PurchaseEvent(event_id=f"e{n}", ts=1_700_000_000_000 + n, user_id="u",
...     session_id="s", order_id=f"o{n}", items=[OrderLine(item_id=i, quantity=1,
...     unit_price=1.0) for i in ("tea", "cup", "milk")]) for n in range(3)]
>>> table = result_table(evaluate(events, dataset="toy", bootstrap=20))
>>> table.row_count
6
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from streamer.replay.evaluate import BundleMetrics, EvaluationResult

__all__ = ["plot_hit_rates", "result_table"]


def _rate(metrics: BundleMetrics, key: str) -> str:
    value = getattr(metrics, key)
    lo, hi = metrics.ci95[key]
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def result_table(result: EvaluationResult) -> Table:
    """One row per method: 2-item and 3-item bundle and pair hit rates with 95% intervals,
    coverage and captured revenue. A rich renderable (``Console().print(table)``)."""
    table = Table(
        title=(
            f"Prequential evaluation: {result.dataset} - {result.orders:,} orders, "
            f"{result.anchors:,} anchor occurrences, {result.seconds:.0f} s"
        ),
        caption="95% intervals: bootstrap over orders; every rate over all anchor occurrences",
    )
    table.add_column("method", style="bold")
    for size in ("2-item", "3-item"):
        table.add_column(f"{size} bundle hit", justify="right")
        table.add_column(f"{size} pair hit", justify="right")
        table.add_column(f"{size} coverage", justify="right")
        table.add_column(f"{size} revenue", justify="right")
    for name, method in result.methods.items():
        cells = [name]
        for metrics in (method.pair, method.triple):
            cells += [
                _rate(metrics, "bundle_hit_rate"),
                _rate(metrics, "pair_hit_rate"),
                f"{metrics.coverage:.3f}",
                f"{metrics.captured_revenue:,.0f}",
            ]
        table.add_row(*cells)
    return table


def plot_hit_rates(result: EvaluationResult, path: str | Path) -> Path:
    """Write a PNG of every method's monthly bundle hit rate (2-item and 3-item panels, with
    95% bands) to ``path``; returns the path.

    Uses matplotlib's Agg canvas directly, not pyplot: no global backend switch, no window,
    safe in a worker or a test.
    """
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
    axes[0].set_ylabel("bundle hit rate (all anchor occurrences)")
    axes[1].legend(loc="best", fontsize="small")
    fig.suptitle(f"{result.dataset}: {result.orders:,} orders, test-then-train")
    out = Path(path)
    fig.savefig(out, format="png", dpi=110)
    return out
