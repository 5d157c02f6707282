"""The worker's live dashboard: one self-contained page and the JSON it polls.

``/dashboard/`` is static HTML with inline JS and SVG (no CDN: workers often have no internet);
it polls ``/dashboard/data.json`` every two seconds and draws reward per impression over time
per policy version (with 95% intervals), the guardrails, the current offers, dead letters and
consumer lag. Every chart point carries its figures as ``data-*`` attributes, so tests (and
curious users) can read what is drawn from the DOM.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from streamer.app.offer_index import OfferIndex
from streamer.app.reward_board import RewardBoard
from streamer.app.reward_tracking import spec_label
from streamer.settings import duration_ms


def dashboard_data(board: RewardBoard, offers: OfferIndex, stats: dict[str, Any], *,
                   window: str | None = None, max_offers: int = 12) -> dict[str, Any]:
    """The JSON behind the page; ``window`` picks a window size (default: the smallest)."""
    sizes = board.sizes()
    size = sizes[0] if sizes else None
    if window:
        size = duration_ms(window)
    series = board.series(size) if size is not None else {}
    guard = board.guardrails()
    return {
        "generated_at": int(time.time() * 1000),
        "window": spec_label(size) if size is not None else None,
        "windows": [spec_label(s) for s in sizes],
        "series": [
            {"policy_version": version, "points": [
                {"start": w.window_start, "end": w.window_end, "reward_rate": w.reward_rate,
                 "lo": w.ci95[0], "hi": w.ci95[1], "impressions": w.impressions,
                 "offer_clicks": w.offer_clicks, "conversions": w.conversions,
                 "revenue": w.revenue, "direct_conversions": w.direct_conversions,
                 "direct_revenue": w.direct_revenue}
                for w in windows]}
            for version, windows in series.items()
        ],
        "guardrails": {
            "srm": None if guard.srm is None else msgspec.to_builtins(guard.srm),
            "regression": None if guard.regression is None
            else msgspec.to_builtins(guard.regression),
            "srm_alarm": guard.srm_alarm,
            "srm_split": board.expected_split is not None,
            "regression_alarm": guard.regression_alarm,
        },
        "offers": [
            {"anchor": o.anchor_item_id, "offer_id": o.offer_id,
             "policy_version": o.policy_version, "ts": o.ts,
             "variants": [{"items": v.items, "discount_pct": v.discount_pct,
                           "probability": v.probability} for v in o.variants]}
            for o in offers.latest(max_offers)
        ],
        "dead_letters": stats.get("streamer_dead_letters_total", {}),
        "lag": stats.get("streamer_consumer_lag", {}),
        "consumed": stats.get("streamer_events_consumed_total", {}),
        "totals": {
            name: stats.get(f"streamer_reward_{name}_total", {})
            for name in ("impressions", "conversions", "revenue")
        },
    }


DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamer dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .5em} h2{font-size:1.05em;margin:1.2em 0 .4em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin:.8em 0}
table{border-collapse:collapse} td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.alarm{color:#b00020;font-weight:bold} .ok{color:#1b7f3b} .muted{color:#888}
svg text{font-size:11px;fill:#444}
</style></head>
<body>
<h1>streamer — live rewards</h1>
<div class="muted">updated <span id="updated">never</span> · window
<select id="window"></select></div>
<section><h2>Reward per impression by policy version</h2>
<svg id="chart" width="900" height="320" role="img"
 aria-label="reward per impression over time per policy version"></svg>
<div id="legend"></div></section>
<section><h2>Guardrails</h2><div id="guardrails" class="muted">no data yet</div></section>
<section><h2>Current offers</h2><table id="offers"></table></section>
<section><h2>Dead letters</h2><table id="dead"></table>
<h2>Consumer lag</h2><table id="lag"></table></section>
<script>
"use strict";
const COLORS = ["#1f77b4","#d62728","#2ca02c","#ff7f0e","#9467bd","#8c564b","#e377c2"];
const SVG = "http://www.w3.org/2000/svg";
let chosen = new URLSearchParams(location.search).get("window") || "";
function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(x) { return Number(x).toLocaleString("en", {maximumFractionDigits: 3}); }
function rows(table, header, data) {
  table.replaceChildren();
  const h = table.insertRow();
  for (const c of header) {
    const th = document.createElement("th"); th.textContent = c; h.appendChild(th);
  }
  for (const r of data) {
    const tr = table.insertRow();
    r.forEach((c, i) => {
      const td = tr.insertCell(); td.textContent = c;
      if (i && typeof c === "number") td.className = "n";
    });
  }
}
function drawChart(data) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const W = 900, H = 320, L = 60, R = 20, T = 15, B = 40;
  const pts = data.series.flatMap(s => s.points);
  svg.setAttribute("data-window", data.window || "");
  svg.setAttribute("data-series", data.series.length);
  if (!pts.length) {
    svg.appendChild(el("text", {x: L, y: H / 2}, "no closed reward windows yet"));
    return;
  }
  const x0 = Math.min(...pts.map(p => p.end)), x1 = Math.max(...pts.map(p => p.end));
  const y1 = Math.max(1e-9, ...pts.map(p => Math.max(p.hi, p.reward_rate))) * 1.1;
  const X = t => L + (x1 === x0 ? (W - L - R) / 2 : (t - x0) / (x1 - x0) * (W - L - R));
  const Y = v => T + (1 - v / y1) * (H - T - B);
  svg.appendChild(el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999"}));
  svg.appendChild(el("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"}));
  for (let i = 0; i <= 4; i++) {
    const v = y1 * i / 4;
    svg.appendChild(el("text", {x: L - 6, y: Y(v) + 4, "text-anchor": "end"}, fmt(v)));
  }
  for (const t of [x0, x1]) {
    svg.appendChild(el("text", {x: X(t), y: H - B + 16, "text-anchor": "middle"},
      new Date(t).toLocaleTimeString("en-GB")));
  }
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  data.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const g = el("g", {"class": "series", "data-version": s.policy_version});
    g.appendChild(el("polyline", {fill: "none", stroke: color, "stroke-width": 2,
      points: s.points.map(p => X(p.end) + "," + Y(p.reward_rate)).join(" ")}));
    for (const p of s.points) {
      g.appendChild(el("line", {x1: X(p.end), x2: X(p.end), y1: Y(p.lo), y2: Y(p.hi),
        stroke: color, "stroke-opacity": 0.4}));
      const c = el("circle", {"class": "point", cx: X(p.end), cy: Y(p.reward_rate), r: 3.5,
        fill: color, "data-version": s.policy_version, "data-window-start": p.start,
        "data-window-end": p.end, "data-reward-rate": p.reward_rate,
        "data-impressions": p.impressions, "data-conversions": p.conversions,
        "data-revenue": p.revenue});
      c.appendChild(el("title", {}, s.policy_version + ": " + fmt(p.reward_rate) +
        " per impression (" + p.impressions + " impressions, " + p.conversions + " conversions" +
        (p.direct_conversions == null ? "" : ", " + p.direct_conversions +
         " through the offer, revenue " + fmt(p.direct_revenue)) + ")"));
      g.appendChild(c);
    }
    svg.appendChild(g);
    const span = document.createElement("span");
    span.className = "legend-entry";
    span.style.color = color;
    span.textContent = "\\u25cf " + s.policy_version + "  ";
    legend.appendChild(span);
  });
}
function status(cls, id, label, rest) {
  // Text nodes only: version names come from the rewards stream, never parsed as HTML.
  const s = document.createElement("span");
  s.className = cls; s.id = id; s.textContent = label;
  return [s, document.createTextNode(rest)];
}
function drawGuardrails(g) {
  const div = document.getElementById("guardrails");
  const srm = g.srm ? status(g.srm_alarm ? "alarm" : "ok", "srm",
    "SRM " + (g.srm_alarm ? "ALARM" : "ok"), " p = " + Number(g.srm.p_value).toPrecision(3) +
    " over " + g.srm.total + " impressions")
    : status("muted", "srm", g.srm_split ? "SRM: one version serving"
      : "SRM: not tested (no rewards.srm_expected_split)", "");
  const reg = g.regression ? status(g.regression_alarm ? "alarm" : "ok", "regression",
    "reward regression " + (g.regression_alarm ? "ALARM" : "ok"), " " +
    g.regression.live_version + " " + fmt(g.regression.live_rate) + " vs " +
    g.regression.previous_version + " lower bound " + fmt(g.regression.previous_lower) +
    (g.regression.enough_data ? "" : " (not enough data)"))
    : status("muted", "regression", "regression: no previous version", "");
  div.className = "";
  div.replaceChildren(...srm, document.createElement("br"), ...reg);
}
async function refresh() {
  try {
    const query = chosen ? "?window=" + encodeURIComponent(chosen) : "";
    const r = await fetch("data.json" + query, {cache: "no-store"});
    const data = await r.json();
    const select = document.getElementById("window");
    select.replaceChildren(...data.windows.map(w => new Option(w, w, false, w === data.window)));
    drawChart(data);
    drawGuardrails(data.guardrails);
    rows(document.getElementById("offers"), ["anchor", "version", "variants"],
      data.offers.map(o => [o.anchor, o.policy_version, o.variants.map(v =>
        v.items.join(" + ") + " @" + v.discount_pct + "% (" + fmt(v.probability) + ")"
      ).join("; ")]));
    rows(document.getElementById("dead"), ["source topic, kind", "messages"],
      Object.entries(data.dead_letters).map(([k, v]) => [k, v]));
    rows(document.getElementById("lag"), ["topic", "messages behind"],
      Object.entries(data.lag).map(([k, v]) => [k, v]));
    document.getElementById("updated").textContent = new Date().toLocaleTimeString("en-GB");
    document.body.setAttribute("data-loaded", "true");
  } catch (e) {
    document.getElementById("updated").textContent = "failed: " + e;
  }
}
document.getElementById("window").addEventListener("change", e => {
  chosen = e.target.value; refresh();
});
refresh();
setInterval(refresh, 2000);
</script>
</body></html>
"""
