"""Live reward tracking on the real broker: impressions and purchases in, feedback records and
reward windows out; windows close and state empties; /metrics and the dashboard (in headless
Chromium) show the figures that were sent; the event clock survives a restart."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.app.reward_tracking import FeedbackRecord
from streamer.events import (
    BundleOffer,
    ClickEvent,
    Evidence,
    OrderLine,
    PurchaseEvent,
    RewardWindow,
    Variant,
)
from streamer.settings import RewardSettings, Settings
from tests.conftest import consume, produce, uncommitted, wait_for

pytestmark = pytest.mark.integration
encode = msgspec.json.encode
PRICES = {"a": 20.0, "b": 10.0, "c": 8.0, "d": 4.0, "z": 99.0}


def fast_rewards(settings: Settings) -> Settings:
    """Seconds instead of half an hour, so windows close within a test."""
    return settings.model_copy(update={"rewards": RewardSettings(
        attribution_window_s=2.0, allowed_lateness_s=0.5, windows="2s",
        ledger_lateness_s=0.5, tick_interval_s=0.3, min_impressions=1, min_conversions=0)})


def offer(offer_id: str, items: list[str], version: str, ts: int) -> BundleOffer:
    return BundleOffer(
        offer_id=offer_id, ts=ts, anchor_item_id=items[0], segment="all",
        policy_version=version, expires_at=ts + 3_600_000,
        variants=[Variant(items=items, discount_pct=10.0,
                          bundle_price=0.9 * sum(PRICES[i] for i in items), probability=1.0,
                          score=1.0, evidence=Evidence(support=3.0, confidence=0.5, lift=2.0))])


def impression(eid: str, session: str, offer_id: str, ts: int) -> ClickEvent:
    return ClickEvent(event_id=eid, ts=ts, user_id="u", session_id=session, item_id="a",
                      kind="offer_impression", offer_id=offer_id, variant=0, propensity=1.0)


def order(eid: str, session: str, items: list[str], ts: int,
          offer_id: str | None = None) -> PurchaseEvent:
    # Bundle items are paid at the 10% discount when bought through the offer.
    factor = 0.9 if offer_id else 1.0
    return PurchaseEvent(event_id=eid, ts=ts, user_id="u", session_id=session, order_id=eid,
                         offer_id=offer_id,
                         items=[OrderLine(item_id=i, quantity=1, unit_price=PRICES[i] * factor)
                                for i in items])


def send_scenario(settings: Settings, ts: int) -> dict[str, dict[str, float]]:
    """Six v1 impressions, four v2 ones, some purchases; returns the expected figures."""
    t = settings.topics
    produce(settings, t.offers, [(b"a", encode(offer("o1", ["a", "b"], "v1", ts))),
                                 (b"c", encode(offer("o2", ["c", "d"], "v2", ts)))])
    clicks = [impression(f"i1-{n}", f"s{n}", "o1", ts) for n in range(6)]
    clicks += [impression(f"i2-{n}", f"t{n}", "o2", ts) for n in range(4)]
    clicks.append(ClickEvent(event_id="k1", ts=ts + 50, user_id="u", session_id="s0",
                             item_id="a", kind="offer_click", offer_id="o1"))
    orders = [
        order("p0", "s0", ["a", "b"], ts + 100, offer_id="o1"),  # through the offer: 27
        order("p1", "s1", ["a", "b", "z"], ts + 100),  # contains the bundle: a + b = 30
        order("p2", "s2", ["a"], ts + 100),  # partial bundle: not a conversion
        order("p3", "t0", ["c", "d"], ts + 100, offer_id="o2"),  # 10.8
    ]
    produce(settings, t.clicks, [(e.session_id.encode(), encode(e)) for e in clicks + clicks])
    produce(settings, t.purchases, [(e.session_id.encode(), encode(e)) for e in orders])
    return {
        "v1": {"impressions": 6, "conversions": 2, "revenue": 57.0, "offer_clicks": 1},
        "v2": {"impressions": 4, "conversions": 1, "revenue": 10.8, "offer_clicks": 0},
    }


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_impressions_and_purchases_in_feedback_and_rewards_out(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = fast_rewards(settings)
    worker = start_worker(settings)
    ts = int(time.time() * 1000)
    expected = send_scenario(settings, ts)
    t = settings.topics

    feedback = consume(settings, t.feedback, lambda rs: len(rs) >= 10, timeout_s=30)
    records = [msgspec.json.decode(r.value, type=FeedbackRecord) for r in feedback]
    assert len(records) == 10  # each impression once, although every click was sent twice
    assert all(r.key.decode() == rec.outcome.offer_id for r, rec in zip(feedback, records,
                                                                        strict=True))
    by_id = {rec.outcome.impression_id: rec.outcome for rec in records}
    assert by_id["i1-0"].converted and by_id["i1-0"].clicked
    assert by_id["i1-0"].revenue == pytest.approx(27.0)
    assert by_id["i1-1"].revenue == pytest.approx(30.0)
    assert not by_id["i1-2"].converted
    assert all(len(rec.candidates) == 1 and rec.candidates[0].items == ("a", "b")
               for rec in records if rec.outcome.offer_id == "o1")

    windows_raw = consume(settings, t.rewards,
                          lambda rs: {r.key for r in rs} >= {b"v1", b"v2"}, timeout_s=30)
    windows = [msgspec.json.decode(r.value, type=RewardWindow) for r in windows_raw]
    for version, figures in expected.items():
        mine = [w for w in windows if w.policy_version == version]
        assert len(mine) == 1 and mine[0].window_end - mine[0].window_start == 2000
        w = mine[0]
        assert (w.impressions, w.conversions, w.offer_clicks) == (
            figures["impressions"], figures["conversions"], figures["offer_clicks"])
        assert w.revenue == pytest.approx(figures["revenue"])
        assert w.reward_rate == pytest.approx(figures["revenue"] / figures["impressions"])
        assert w.window_start <= ts < w.window_end

    # Windows closed and expired: no session or window state is left behind.
    wait_for(lambda: (s := worker.stats()).get("reward_open_sessions") == 0
             and s.get("reward_open_windows") == 0, 20, "attribution and ledger state to empty")

    # A straggler far behind the watermark is reported, not applied.
    straggler = impression("late-1", "s0", "o1", ts - 60_000)
    produce(settings, t.clicks, [(b"s0", encode(straggler))])
    wait_for(lambda: worker.stats().get("streamer_late_events_total", {}).get(
        "attribution,too_late") == 1, 20, "the late impression to be counted")

    metrics = scrape(worker.url)
    for version, figures in expected.items():
        label = (("policy_version", version),)
        for name in ("impressions", "conversions", "revenue", "offer_clicks"):
            assert metrics[(f"streamer_reward_{name}_total", label)] == pytest.approx(
                figures[name]), name
    assert metrics[("streamer_feedback_records_total", ())] == 10
    # The worker's conversion model (a feature of the learned policy) learned each closed
    # impression whose offer it knew, as the trainer's does from the feedback topic.
    known = sum(1 for rec in records if rec.candidates)
    assert known > 0 and worker.stats()["conversion_learned"] == known
    # Every click was sent twice: 10 impressions and the offer click.
    assert metrics[("streamer_attribution_events_total", (("status", "duplicate"),))] == 11
    assert metrics[("streamer_late_events_total",
                    (("stage", "attribution"), ("status", "too_late")))] == 1
    assert metrics[("streamer_events_consumed_total", (("topic", t.clicks),))] == 23  # 11 twice + 1
    assert ("streamer_consumer_lag", (("topic", t.clicks),)) in metrics
    wait_for(lambda: scrape(worker.url).get(
        ("streamer_reward_per_impression", (("policy_version", "v1"), ("window", "2s")))),
        20, "the reward gauge from the rewards topic")
    assert scrape(worker.url)[("streamer_reward_per_impression",
                               (("policy_version", "v1"), ("window", "2s")))] == pytest.approx(
        57.0 / 6)

    # The dashboard, rendered by a real browser, draws what was sent.
    points = dashboard_points(worker.url, tmp_path)
    assert {p["data-version"] for p in points} == {"v1", "v2"}
    for p in points:
        figures = expected[p["data-version"]]
        assert int(p["data-impressions"]) == figures["impressions"]
        assert int(p["data-conversions"]) == figures["conversions"]
        assert float(p["data-reward-rate"]) == pytest.approx(
            figures["revenue"] / figures["impressions"])


class _Points(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.points: list[dict[str, str]] = []
        self.loaded = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "circle" and "point" in a.get("class", ""):
            self.points.append(a)
        if tag == "body" and a.get("data-loaded") == "true":
            self.loaded = True


def dashboard_points(url: str, tmp_path: Path) -> list[dict[str, str]]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by .ci/run (apt-get install chromium)"

    def render() -> _Points | None:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
             "--virtual-time-budget=3000", "--dump-dom", f"{url}/dashboard/"],
            capture_output=True, text=True, timeout=60).stdout
        parsed = _Points()
        parsed.feed(dom)
        return parsed if parsed.loaded and parsed.points else None

    parsed = wait_for(render, 60, "the dashboard to draw points", interval_s=0.5)
    assert re.search(r"\d", str(parsed.points))
    return list(parsed.points)


def test_clocks_survive_a_restart_and_the_cli_reads_the_rewards(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    from tests.conftest import settings_env

    settings = fast_rewards(settings)
    first = start_worker(settings)
    ts = int(time.time() * 1000)
    expected = send_scenario(settings, ts)
    t = settings.topics
    consume(settings, t.rewards, lambda rs: {r.key for r in rs} >= {b"v1", b"v2"},
            timeout_s=30)
    wait_for(lambda: first.stats().get("reward_open_sessions") == 0, 20, "sessions to close")
    # Stopped, not killed: the restart below is a clean one.
    assert first.process.stop() == 0, first.process.log_path.read_text()[-3000:]
    # Events the first worker took but had not committed are delivered again (at least once;
    # its state has them already): they are judged like the impression below.
    redelivered = {t.clicks: uncommitted(settings, t.clicks),
                   t.purchases: uncommitted(settings, t.purchases)}

    # The restarted worker recovers the event clock with the sessions: a redelivered
    # impression of a window that already closed is too late, not a second record.
    second = start_worker(settings)
    produce(settings, t.clicks, [(b"s3", encode(impression("i1-3", "s3", "o1", ts)))])

    def judged() -> dict[str, float]:
        found: dict[str, float] = second.stats().get("streamer_attribution_events_total", {})
        return found

    # Judged: its offset is committed (after its judgement).
    wait_for(lambda: not uncommitted(settings, t.clicks) and judged(), 20,
             "the redelivered impression to be judged",
             explain=lambda: (judged(), redelivered, second.process.log_path.read_text()[-3000:]))
    statuses = judged()
    assert set(statuses) == {"too_late"}, (statuses, redelivered)
    env = settings_env(settings)
    shown = subprocess.run([sys.executable, "-m", "streamer", "rewards", "--jsonl",
                            str(tmp_path / "w.jsonl")], env=env | {"COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"v1\s.*2s.*\b6\b.*\b2\b.*57\.00", shown.stdout), shown.stdout
    report = tmp_path / "report.html"
    made = subprocess.run([sys.executable, "-m", "streamer", "report", "--input",
                           str(tmp_path / "w.jsonl"), "-o", str(report)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 1
    assert f"<td>v1</td><td>1</td><td>{expected['v1']['impressions']}</td>" in page
