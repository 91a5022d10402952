"""`perfpilot compare` through the real console script (real subprocesses)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PY = sys.executable
REPORT = "from perfpilot.reporting import report_metric; import sys; report_metric('loss', float(sys.argv[1]))"

pytestmark = pytest.mark.slow


def cmd(*argv: str) -> str:
    import shlex

    return shlex.join(argv)


def one_line_error(result) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("perfpilot: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One real comparison (B reports half A's loss), its outputs and its saved runs."""
    folder = tmp_path_factory.mktemp("compare")
    exe = shutil.which("perfpilot", path=str(Path(PY).parent)) or "perfpilot"
    result = subprocess.run(
        [exe, "compare", "--runs", "5", "--warmup", "0", "--metric", "reported.loss,wall", "--json", "v.json",
         "--html", "c.html", "--save", "runs", "--", cmd(PY, "-c", REPORT, "1.0"), cmd(PY, "-c", REPORT, "0.5")],
        cwd=folder, capture_output=True, text=True, timeout=120)
    return folder, result


def test_compare_two_commands_prints_json_and_html(saved) -> None:
    folder, result = saved
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith("reported.loss"))
    assert "smaller" in row and "0.500" in row and "5/5" in row
    data = json.loads((folder / "v.json").read_text())
    v = data["verdicts"]["reported.loss"]
    assert v["verdict"] == "smaller" and v["improved"] is True and v["ratio"] == pytest.approx(0.5)
    assert data["primary"] == "reported.loss" and data["runs"] == 5
    assert data["stopping"]["looks"] == [5] and "Bonferroni" in data["stopping"]["rule"]
    assert data["stopping"]["per_look_confidence"] == {"5": pytest.approx(0.95)}
    assert len(data["a"]["runs"]) == 5 and data["a"]["runs"][0]["values"]["reported.loss"] == 1.0
    html = (folder / "c.html").read_text()
    assert "Chart" in html and "dist-0" in html and "order-1" in html
    assert not re.search(r"<script[^>]+src=", html)  # self-contained, opens offline
    assert sorted(p.name for p in (folder / "runs" / "a").iterdir())[0] == "run-001.json"


def test_compare_saved_profile_sets(saved, perfpilot_cli) -> None:
    folder, _ = saved
    a_files = sorted(str(p) for p in (folder / "runs" / "a").glob("*.json"))
    b_files = sorted(str(p) for p in (folder / "runs" / "b").glob("*.json"))
    result = perfpilot_cli("compare", "--metric", "reported.loss", "--json", "-", *a_files, *b_files)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdicts"]["reported.loss"]["verdict"] == "smaller"
    assert data["a"]["runs"][0]["file"] == a_files[0]
    # the same sets as two folders, and with an explicit separator, reversed
    by_dir = perfpilot_cli("compare", "--metric", "reported.loss", str(folder / "runs" / "a"), str(folder / "runs" / "b"))
    assert by_dir.returncode == 0 and "smaller" in by_dir.stdout
    swapped = perfpilot_cli("compare", "--metric", "reported.loss", "--json", "-", *b_files, "vs", *a_files)
    assert json.loads(swapped.stdout)["verdicts"]["reported.loss"]["verdict"] == "larger"


def test_mismatched_or_empty_profile_sets_are_one_line_errors(saved, perfpilot_cli, tmp_path) -> None:
    folder, _ = saved
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(folder / "runs" / "a" / "run-001.json", mixed / "1.json")
    shutil.copy(folder / "runs" / "b" / "run-001.json", mixed / "2.json")
    line = one_line_error(perfpilot_cli("compare", str(mixed), str(folder / "runs" / "b")))
    assert "A mixes different commands" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no profiles for A" in one_line_error(perfpilot_cli("compare", str(empty), str(folder / "runs" / "b")))
    missing = one_line_error(perfpilot_cli("compare", str(tmp_path / "base" / "*.json"), str(tmp_path / "new" / "*.json")))
    assert "cannot read profile" in missing
    same_folder = one_line_error(perfpilot_cli("compare", *(str(p) for p in (folder / "runs" / "a").glob("*.json"))))
    assert "cannot tell which" in same_folder and "vs" in same_folder
    assert "not a perfpilot Profile" in one_line_error(perfpilot_cli("compare", str(folder / "v.json"), "vs",
                                                                     str(folder / "v.json")))


def test_command_failing_in_some_runs_is_refused_and_named(perfpilot_cli, tmp_path) -> None:
    flaky = tmp_path / "flaky.py"
    flaky.write_text(
        "import pathlib, sys\n"
        "p = pathlib.Path('count')\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "sys.exit(7 if n in (3, 4) else 0)\n"
    )
    result = perfpilot_cli("compare", "--runs", "6", "--", cmd(PY, "-c", "pass"), cmd(PY, str(flaky)), cwd=tmp_path)
    line = one_line_error(result)
    assert "1 of 6 runs failed" in line and "B run 2 exited with 7" in line
    assert result.returncode == 125


@pytest.mark.parametrize(("args", "message"), [
    (["--metric", "wal", "--", "true", "true"], "unknown metric 'wal'"),
    (["--metric", "wall,rss", "--", "true", "true"], "unknown metric 'rss'"),
    (["--", "true", "true", "true"], "expected two commands (A and B), got 3"),
    ([], "nothing to compare"),
    (["--cpus", "9999", "--", "true", "true"], "--cpus: CPU 9999 is not available here"),
    (["--threshold", "lots", "--", "true", "true"], "expected a percentage"),
    (["--", "", "true"], "an empty command cannot be measured"),
    (["--", "no-such-command-xyz", "true"], "command not found: no-such-command-xyz"),
])
def test_bad_input_is_one_line(perfpilot_cli, args: list[str], message: str) -> None:
    assert message in one_line_error(perfpilot_cli("compare", *args))


def test_unavailable_metric_costs_one_run_and_names_it(perfpilot_cli) -> None:
    line = one_line_error(perfpilot_cli("compare", "--metric", "reported.nope", "--", cmd(PY, "-c", "pass"),
                                        cmd(PY, "-c", "pass")))
    assert "A: metric 'reported.nope' is not in this profile" in line


def test_help_says_how_false_positives_are_controlled(perfpilot_cli) -> None:
    result = perfpilot_cli("compare", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Bonferroni" in text and "--cpus" in text and "--threshold" in text


def test_estimated_energy_is_labelled_in_table_and_html() -> None:
    from rich.console import Console

    from perfpilot.cli.compare import render_terminal
    from perfpilot.profilers.measure import compare_profiles
    from perfpilot.profilers.profile import Profile
    from perfpilot.profilers.renderers import compare_html

    def run(command: str, joules: float, wall: float) -> Profile:
        return Profile(target={"command": [command], "exit_code": 0}, host={"machine_id": "m"},
                       summary={"wall_s": wall, "energy": {"cpu": {"joules": joules, "source": "estimate"}}})

    a = [run("old", 10.0 + i * 0.01, 1.0 + i * 0.001) for i in range(8)]
    b = [run("new", 5.0 + i * 0.01, 1.0 + i * 0.001) for i in range(8)]
    result = compare_profiles(a, b, metrics=["wall", "energy"])
    energy = result.verdicts["energy"]
    assert energy.source == "estimate" and not energy.improved
    console = Console(record=True, width=200)
    render_terminal(result, console)
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.strip().startswith("energy"))
    assert "smaller (estimate)" in row and "J*" in row
    assert "a model, not a meter" in text
    assert "no change" in next(line for line in text.splitlines() if line.strip().startswith("wall"))
    page = compare_html.render(result)
    assert "smaller (estimate)" in page and "joules (estimate)" in page


def _rendered(comparison) -> tuple[str, str]:
    from rich.console import Console

    from perfpilot.cli.compare import render_terminal
    from perfpilot.profilers.renderers import compare_html

    console = Console(record=True, width=400)
    render_terminal(comparison, console)
    return " ".join(console.export_text().split()), compare_html.render(comparison)


@pytest.mark.parametrize(("runs", "level"), [(5, "98.3% CI"), (10, "96.7% CI")])
def test_printed_ci_level_is_the_level_computed(runs: int, level: str) -> None:
    """Looks at 5 and 10 runs split alpha 0.05 as 0.0167 and 0.0333: the CI printed is the one computed."""
    from perfpilot.profilers.measure import Comparison
    from perfpilot.profilers.stats import StoppingPlan

    plan = StoppingPlan(5, 10)
    a = [0.2 + 0.004 * ((7 * i) % 5) for i in range(runs)]
    v, _ = plan.decide(a, [0.7 * x for x in a], metric="wall")
    assert v.confidence == pytest.approx(plan.confidence_at(runs))
    comparison = Comparison(a=[], b=[], verdicts={"wall": v}, runs=runs, stopped_early=False, primary="wall",
                            plan=plan, looks_taken=[n for n in plan.looks if n <= runs], stop_reason="clear")
    text, page = _rendered(comparison)
    assert f"B/A [{level}]" in text and f"wall: {level}, threshold" in text
    assert f"B/A [{level}]" in page and f"with a {level} (percentile bootstrap)" in page
    assert "95% CI" not in text + page and "95.0%" not in text + page


def test_deterministic_verdict_shows_its_source_and_a_noise_bound() -> None:
    from perfpilot.profilers.measure import compare_profiles
    from perfpilot.profilers.profile import Profile

    def run(command: str, count: int) -> Profile:
        return Profile(target={"command": [command], "exit_code": 0}, host={"machine_id": "m"},
                       summary={"wall_s": 1.0, "instructions": count, "instructions_source": "valgrind"})

    a = [run("old", 396_590_000 + d) for d in (0, 90_000, 140_000)]
    b = [run("new", 404_500_000 + d) for d in (0, 60_000, 120_000)]
    result = compare_profiles(a, b, metrics=["instructions"])
    v = result.primary_verdict
    assert v.rule == "deterministic" and v.source == "valgrind" and v.verdict == "larger" and v.regressed
    text, page = _rendered(result)
    assert re.search(r"instructions \(valgrind\) 396\.68M 404\.56M 1\.020 \[1\.01\d, 1\.02\d\] .* 3/3 .* larger", text), text
    assert "B/A [noise bound]" in text and "instructions: noise bound (valgrind)" in text
    assert "near-deterministic" in text and "noise bound" in page and "instructions</b> (valgrind)" in page
