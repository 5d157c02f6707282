"""``streamer report``: one self-contained HTML file (plots as base64 PNGs) from RewardWindows.

The windows come from the ``rewards`` topic or a JSONL file (``streamer rewards --jsonl``
saves one; a replay's topic works the same). matplotlib runs headless (Agg); nothing is
fetched from the internet when the report is opened.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from streamer.app.reward_board import RewardBoard, skipped_note
from streamer.app.reward_tracking import spec_label
from streamer.events import RewardWindow

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def reward_figure(size: int, series: Mapping[str, Sequence[RewardWindow]]) -> Figure:
    """Reward per impression (95% band) and impressions per window over time, per policy
    version, of the windows of ``size`` ms (:meth:`RewardBoard.series`). On matplotlib's Agg
    canvas, not pyplot: nothing global is switched or kept (as ``streamer.replay.report``).

    The legend is given its lines and their labels, not left to find them: matplotlib leaves
    out of a legend it assembles itself every artist whose label starts with "_" (its
    documented way to hide one), and a version name is any text an operator chose."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    lines = []
    for version, rows in series.items():
        x = [_when(w.window_end) for w in rows]
        line, = top.plot(x, [w.reward_rate for w in rows], marker="o", markersize=3,
                         label=version)
        lines.append(line)
        top.fill_between(x, [w.ci95[0] for w in rows], [w.ci95[1] for w in rows],
                         color=line.get_color(), alpha=0.15)
        bottom.plot(x, [w.impressions for w in rows], color=line.get_color())
    top.set_ylabel("reward per impression")
    top.set_title(f"{spec_label(size)} windows (band: 95% interval)")
    top.legend(lines, list(series), loc="best")
    bottom.set_ylabel("impressions")
    bottom.set_xlabel("window end (UTC)")
    fig.autofmt_xdate()
    return fig


def render_report(windows: Sequence[RewardWindow], *, title: str = "streamer rewards",
                  skipped: int = 0) -> str:
    """The report as HTML: per window size, reward per impression (with 95% intervals) and
    impressions per window over time per policy version, and a totals table per version.
    ``skipped``: messages of the rewards topic read as no window (said next to the count of
    windows: the totals lack whatever they held).

    >>> w = RewardWindow(window_start=1_700_000_040_000, window_end=1_700_000_100_000,
    ...     policy_version="v1", impressions=10, offer_clicks=2, conversions=1, revenue=30.0,
    ...     reward_rate=3.0, ci95=[0.5, 9.0])
    >>> page = render_report([w])
    >>> page.count("data:image/png;base64,"), "<td>v1</td>" in page
    (1, True)
    """
    import matplotlib

    board = RewardBoard(history=1_000_000, min_impressions=1, min_conversions=0)
    board.add_all(windows)
    sections: list[str] = []
    # Version names are text from the rewards topic (any 1-200 characters): matplotlib would
    # read one with "$" as mathtext, and an unbalanced one ("$\frac{$") failed the report.
    # Scoped to these figures, not set for the process.
    with matplotlib.rc_context({"text.parse_math": False}):
        for size in board.sizes():
            fig = reward_figure(size, board.series(size))
            sections.append(f"<h2>{spec_label(size)} windows</h2>"
                            f'<img alt="reward per impression, {spec_label(size)} windows" '
                            f'src="data:image/png;base64,{_png(fig)}">')
    rows_html = []
    sizes = board.sizes()
    if sizes:
        # Totals from the smallest windows: tumbling ones count each impression once.
        for version, rows in board.series(sizes[0]).items():
            n = sum(w.impressions for w in rows)
            revenue = sum(w.revenue for w in rows)
            conversions = sum(w.conversions for w in rows)
            reward = sum(w.reward_rate * w.impressions for w in rows)
            rows_html.append(
                f"<tr><td>{html.escape(version)}</td><td>{len(rows)}</td><td>{n:,}</td>"
                f"<td>{conversions:,}</td><td>{revenue:,.2f}</td>"
                f"<td>{(reward / n if n else 0.0):.4f}</td></tr>")
    guard = board.guardrails()
    span = (f"{_when(min(w.window_start for w in windows)):%Y-%m-%d %H:%M} to "
            f"{_when(max(w.window_end for w in windows)):%Y-%m-%d %H:%M} UTC"
            if windows else "no windows")
    note = skipped_note(skipped)
    skipped_html = f"; <b>{html.escape(note)}</b>" if note else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1100px}}
td,th{{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}}
table{{border-collapse:collapse}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{len(windows)} windows, {span}{skipped_html}.
Guardrails on the newest windows: sample-ratio mismatch
{"<b>ALARM</b>" if guard.srm_alarm else guard.srm_status}; reward regression
{"<b>ALARM</b>" if guard.regression_alarm else "none"}.</p>
<h2>Totals per policy version</h2>
<table><tr><th>version</th><th>windows</th><th>impressions</th><th>conversions</th>
<th>revenue</th><th>reward per impression</th></tr>{"".join(rows_html)}</table>
{"".join(sections)}
</body></html>
"""
