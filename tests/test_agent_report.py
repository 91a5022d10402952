"""What the optimiser's report says (issue 17 item 3-4): the CI level the engine computed, sizes
in binary units, reasons cut at a word, and the no-effect case read as "no change"."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rich.console import Console

from perfpilot.agent import report
from perfpilot.agent.figures import ci_label, human_bytes, shorten
from perfpilot.agent.loop import Baseline, Result
from perfpilot.agent.outcomes import Outcome
from perfpilot.agent.progress import TerminalProgress
from perfpilot.agent.proposals import Proposal
from perfpilot.cli.optimize import _summary
from perfpilot.config import Settings
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.stats import StoppingPlan, verdict

FAST = [1.00, 1.02, 0.99, 1.01, 1.03, 0.98, 1.00, 1.02, 0.99, 1.01]


def result_with(runs: int) -> tuple[Result, float]:
    """A result whose one accepted change was judged by the real engine at the look after ``runs`` runs."""
    level = StoppingPlan(5, 10, 0.95).confidence_at(runs)
    cpu = verdict(FAST[:runs], [x * 0.5 for x in FAST[:runs]], metric="cpu", confidence=level).to_dict()
    rss = verdict([13_233_472.0] * runs, [13_240_000.0] * runs, metric="peak_rss", confidence=level).to_dict()
    outcome = Outcome(1, Proposal(kind="patch", title="halve it"), "accepted", "improved", "",
                      verdicts={"cpu": cpu, "peak_rss": rss}, runs=runs, values_a=FAST[:runs],
                      values_b=[x * 0.5 for x in FAST[:runs]])
    result = Result(settings=Settings(run="python x.py"), project=Path("/p"), started_at=time.time(),
                    objective="cpu", guards={"peak_rss": 0.1}, outcomes=[outcome],
                    cumulative={"verdict": cpu, "runs": runs, "measured": False, "values_a": [], "values_b": []})
    result.baseline = Baseline(Profile(summary={}), FAST[:3], {"cpu": 1.0}, None)
    return result, level


@pytest.mark.parametrize("runs", [5, 10])
def test_the_printed_confidence_is_the_computed_one(runs):
    result, level = result_with(runs)
    assert level != 0.95  # sequential looks split alpha: the level is not 95% at either look
    expected = f"{level * 100:.1f}% CI"  # 98.3% after 5 runs, 96.7% after 10
    terminal = Console(record=True, width=200)
    TerminalProgress(terminal, live=False).outcome(result.outcomes[0], "cpu")
    _summary(terminal, result, {})
    text = terminal.export_text()
    page = report.render_html(report.build(result))
    for shown in (text, page, result.outcomes[0].summary_line("cpu")):
        assert expected in shown and "95% CI" not in shown and "95.0% CI" not in shown
    assert report.build(result)["proposals"][0]["verdicts"]["cpu"]["confidence"] == pytest.approx(level)


def test_sizes_read_in_binary_units():
    result, _ = result_with(5)
    result.baseline.profile.hotspots = [{"function": "frequencies", "file": "w.py", "line": 3, "self_pct": 80.0,
                                         "total_pct": 90.0}]
    page = report.render_html(report.build(result))
    assert "frequencies" in page and "w.py:3" in page  # the baseline's hot spots, with or without a final re-test
    assert "12.6 MiB" in page and "1.323e+07" not in page
    assert human_bytes(13_233_472) == "12.6 MiB" and human_bytes(512) == "512 B" and human_bytes(3 * 2**30) == "3 GiB"
    assert ci_label({"confidence": 0.95}) == "95% CI" and ci_label({}) == "95% CI"


def test_reasons_are_cut_at_a_word():
    text = "the run command exited with 1 because the candidate removed the function that the benchmark imports"
    short = shorten(text, 60)
    assert len(short) <= 60 and short.endswith("…")
    assert text.startswith(short[:-1]) and text[len(short) - 1] == " "  # the cut falls between words
    terminal = Console(record=True, width=300)
    outcome = Outcome(2, Proposal(kind="patch", title="t"), "rejected", "run failed", text * 3)
    TerminalProgress(terminal, live=False).outcome(outcome, "cpu")
    shown = terminal.export_text().split("(", 1)[1].rsplit(")", 1)[0]
    assert shown.endswith("…") and (text * 3).startswith(shown[:-1]) and (text * 3)[len(shown) - 1] == " "


def test_no_measurable_effect_reads_no_change_not_more_runs(tmp_path):
    from perfpilot.agent.acceptance import decide

    v = verdict([1.0, 1.2, 0.9, 1.1, 1.05], [1.01, 1.18, 0.92, 1.12, 1.04], metric="cpu", confidence=0.983)
    assert v.verdict == "inconclusive" and v.ci_low < 1 < v.ci_high
    from perfpilot.agent.verification import Verification

    class Cand:
        diff = ""

    outcome = decide("cpu", {}, Proposal(kind="patch", title="t"), 1, Verification({"cpu": v.to_dict()}, 5, [], []), Cand())
    assert outcome.reason == "no change" and "no measurable effect" in outcome.detail
    assert "runs per side" not in outcome.detail and "98.3% CI" in outcome.detail


def test_the_engines_name_for_the_interval_wins():
    assert ci_label({"confidence": 0.9833, "interval": "noise bound"}) == "noise bound"
    result, level = result_with(5)
    assert result.outcomes[0].verdicts["cpu"]["interval"] == "98.3% CI" == ci_label({"confidence": level})
