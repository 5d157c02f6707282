"""What the demo says about the trainer: its candidates, the gate's last margin, and why no
learned version went live when none did."""

from __future__ import annotations

from prometheus_client import generate_latest

from streamer.app.demo import Candidates, trainer_candidates, trainer_lines
from streamer.observability import TrainerMetrics, parse_snapshot


def trainer_metrics(promoted: int = 0, rejected: int = 0, margin: float | None = None,
                    ) -> dict[str, object]:
    """A trainer's metrics as the demo reads them: its /metrics page, parsed."""
    m = TrainerMetrics()
    m.trainer_promotions.inc(promoted)
    if rejected:
        m.trainer_rejections.labels("gate").inc(rejected - 1)
        m.trainer_rejections.labels("non_finite").inc()
    if margin is not None:
        m.trainer_gate_margin.set(margin)
    return parse_snapshot(generate_latest(m.registry).decode())


def test_the_trainers_metrics_page_reads_as_its_candidates() -> None:
    assert trainer_candidates(trainer_metrics(1, 3, -0.45)) == Candidates(1, 3, -0.45)
    assert trainer_candidates(trainer_metrics()) == Candidates(0, 0, 0.0)


def test_rejected_candidates_and_nothing_live_say_why_and_what_to_do() -> None:
    lines = trainer_lines(trainer_metrics(rejected=4, margin=-0.45), adopted=0)
    assert lines[0] == ("trainer candidates: 4 judged, 0 promoted, 4 rejected (the last one's "
                        "margin at the gate: -0.450 reward per impression; promoted above 0)")
    assert lines[1].startswith("no learned version went live: the gate promotes")
    assert "--duration 180" in lines[1] and len(lines) == 2


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
