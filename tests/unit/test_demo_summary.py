"""What the demo says at its end: what it sent and what the worker consumed, what the offers
earned and what that figure is, the trainer's candidates, the gate's last margin and why no
learned version went live when none did, and how its processes stopped; and what
``streamer simulate``'s table says its figures are."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from prometheus_client import generate_latest

from streamer.app.demo import (
    Candidates,
    DemoResult,
    StreamerProcess,
    stopped,
    summary,
    trainer_candidates,
    trainer_lines,
)
from streamer.app.simulate import report_table
from streamer.observability import TrainerMetrics, parse_snapshot
from streamer.simulation import SimulationReport


def trainer_metrics(promoted: int = 0, rejected: int = 0, margin: float | None = None,
                    skipped: int = 0) -> dict[str, object]:
    """A trainer's metrics as the demo reads them: its /metrics page, parsed."""
    m = TrainerMetrics()
    m.trainer_promotions.inc(promoted)
    if skipped:
        m.trainer_skips.labels("too_few_live").inc(skipped)
        m.trainer_skips.labels("shutdown").inc()  # not a round the summary speaks of
    if rejected:
        m.trainer_rejections.labels("gate").inc(rejected - 1)
        m.trainer_rejections.labels("non_finite").inc()
    if margin is not None:
        m.trainer_gate_margin.set(margin)
    return parse_snapshot(generate_latest(m.registry).decode())


def test_the_trainers_metrics_page_reads_as_its_candidates() -> None:
    assert trainer_candidates(trainer_metrics(1, 3, -0.45)) == Candidates(1, 3, -0.45)
    assert trainer_candidates(trainer_metrics()) == Candidates(0, 0, 0.0)
    assert trainer_candidates(trainer_metrics(skipped=2)) == Candidates(0, 0, 0.0, skipped=2)


def test_rejected_candidates_and_nothing_live_say_why_and_what_to_do() -> None:
    lines = trainer_lines(trainer_metrics(rejected=4, margin=-0.45), adopted=0)
    assert lines[0] == ("trainer candidates: 4 judged, 0 promoted, 4 rejected (the last one's "
                        "margin at the gate: -0.450 reward per impression; promoted above 0)")
    assert lines[1].startswith("no learned version went live: the gate promotes")
    assert "(--duration 480)" in lines[1] and len(lines) == 2  # twice the default run's
    assert "(--duration 180)" in trainer_lines(trainer_metrics(rejected=1), 0, 90.0)[1]


def test_rounds_skipped_after_a_promotion_are_told_apart_from_judged_ones() -> None:
    lines = trainer_lines(trainer_metrics(promoted=1, rejected=1, margin=0.5, skipped=3),
                          adopted=1)
    assert lines == [
        "trainer candidates: 2 judged, 1 promoted, 1 rejected (the last one's margin at the "
        "gate: +0.500 reward per impression; promoted above 0); 3 rounds skipped before "
        "training (too few impressions of the live version yet to judge a candidate against)"]


def test_a_promotion_not_adopted_yet_is_told_apart() -> None:
    lines = trainer_lines(trainer_metrics(promoted=1, rejected=2, margin=0.8), adopted=0)
    assert lines[0].startswith("trainer candidates: 3 judged, 1 promoted, 2 rejected")
    assert "+0.800" in lines[0]
    assert lines[1] == ("the trainer promoted a version as the run ended; the worker had not "
                        "adopted it yet")


def test_no_candidate_yet_and_a_live_version() -> None:
    lines = trainer_lines(trainer_metrics(), adopted=0)
    assert lines[0] == "trainer candidates: 0 judged, 0 promoted, 0 rejected"
    assert lines[1].startswith("no learned version yet")
    assert trainer_lines(trainer_metrics(promoted=2, margin=1.2), adopted=2) == [
        "trainer candidates: 2 judged, 2 promoted, 0 rejected (the last one's margin at the "
        "gate: +1.200 reward per impression; promoted above 0)"]


def test_without_the_trainers_metrics_nothing_is_said() -> None:
    assert trainer_lines({}, adopted=0) == []


def demo_result(reward: str = "revenue", workdir: Path | None = None) -> DemoResult:
    """A demo's end: 1,000 clicks and 200 purchases sent (+5 malformed), all consumed; v0
    closed 400 of 450 impressions shown."""
    stats = {
        "streamer_events_consumed_total": {"clicks": 1_003.0, "purchases": 202.0,
                                           "streamer-demo-1-item-baskets": 52.0},
        "streamer_offers_published_total": 70.0,
        "streamer_dead_letters_total": {"clicks": 3.0, "purchases": 2.0},
        "streamer_reward_impressions_total": {"v0-greedy": 400.0},
        "streamer_reward_conversions_total": {"v0-greedy": 150.0},
        "streamer_reward_revenue_total": {"v0-greedy": 4_000.0},
        "streamer_reward_sum_total": {"v0-greedy": 4_000.0},
    }
    return DemoResult(worker_stats=stats, sent={"clicks": 1_000, "purchases": 200},
                      malformed_sent=5, impressions=450, worker_ready_s=3.0, reward=reward,
                      workdir=workdir)


def test_the_summary_counts_the_storefronts_events_not_the_workers_internal_messages() -> None:
    # The item-baskets repartition's 52 messages (batches of the worker's own) read as
    # "events consumed" beside the clicks and purchases sent.
    text = summary(demo_result())
    assert "events consumed from clicks: 1,003" in text
    assert "events consumed from purchases: 202" in text
    assert "item-baskets" not in text


def test_the_summary_says_what_its_numbers_are_and_where_to_look_next(tmp_path: Path) -> None:
    for log in ("worker.log", "broker.log"):  # --no-trainer: no trainer.log
        (tmp_path / log).touch()
    lines = summary(demo_result(workdir=tmp_path)).splitlines()
    assert "dead letters: 5 (the malformed events: set aside with their reason, the worker " \
           "went on)" in lines
    assert ("offer impressions shown: 450, 400 of them closed (their attribution window over: "
            "bought with the offer or not); the rest were still open when the demo ended"
            ) in lines
    assert ("v0-greedy: 10.000 revenue per closed impression (4,000.00 of bundle revenue from "
            "150 conversions over 400 impressions)") in lines
    assert f"logs: {tmp_path} (broker.log, worker.log)" in lines
    assert lines[-1].startswith("next: `streamer simulate`")
    margin = summary(demo_result(reward="margin"))
    assert "v0-greedy: 10.000 margin per closed impression" in margin


def test_a_child_killed_at_the_end_is_told_apart_from_one_that_stopped() -> None:
    # "trainer stopped (exit code -9)" read like any other exit code.
    assert stopped("worker", 0) == "worker stopped"
    assert stopped("trainer", -signal.SIGKILL) == (
        "trainer killed: still running 15 s after it was asked to stop (see its log, trainer.log)")
    assert stopped("worker", 1) == "worker stopped with exit code 1 (see its log, worker.log)"


def test_a_child_that_ended_before_it_was_asked_to_stop_is_told_apart() -> None:
    # A worker killed by the out-of-memory killer mid-run read "killed: still running 15 s
    # after it was asked to stop", as if the demo had had to kill it.
    assert stopped("worker", -signal.SIGKILL, ended_before=True) == (
        "worker had ended before the run did: killed by SIGKILL, not by this command (the "
        "kernel's out-of-memory killer, say) (see its log, worker.log)")
    assert stopped("trainer", -signal.SIGSEGV, ended_before=True) == (
        "trainer had ended before the run did: killed by SIGSEGV (see its log, trainer.log)")
    assert stopped("worker", 1, ended_before=True) == (
        "worker had ended before the run did: exit code 1 (see its log, worker.log)")


def test_stopping_a_child_says_whether_it_had_already_ended(tmp_path: Path) -> None:
    # `python -m streamer no-such-command` exits 2 at once, before anyone asks it to stop.
    child = StreamerProcess("no-such-command", dict(os.environ), tmp_path / "child.log")
    child.proc.wait(timeout=60)
    assert child.stop_and_say(timeout_s=5) == (
        "no-such-command had ended before the run did: exit code 2 (see its log, child.log)")


def test_the_simulation_table_counts_sessions_and_says_what_its_rewards_are() -> None:
    # Its "impressions" column counted the sessions shown no offer too, and nothing said
    # that the rewards are the simulator's expected margins, nor what regret is.
    report = SimulationReport()
    report.record(ts_ms=1, policy_version=None, expected_reward=0.0, oracle_reward=2.0)
    report.record(ts_ms=2, policy_version="v0-greedy", expected_reward=1.5, oracle_reward=2.0)
    table = report_table(report)
    assert [c.header for c in table.columns] == [
        "policy version", "sessions", "expected reward", "regret", "share of oracle",
        "95% interval"]
    caption = str(table.caption)
    assert "the margin the simulator's hidden model expects" in caption
    assert "regret: what the oracle's best variant would have earned on top" in caption
