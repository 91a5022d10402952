"""The loop's decisions with a stand-in verifier (real workspace, real tests, no timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from perfpilot.agent.backends.errors import BackendError
from perfpilot.agent.acceptance import parse_guards
from perfpilot.agent.loop import BaselineRunFailed, BaselineTestsFailed, Optimizer, QuietProgress
from perfpilot.agent.verification import RunSpec, Verification
from perfpilot.agent.proposers.knob_proposer import KnobProposer
from perfpilot.agent.proposers.llm_proposer import LLMProposer
from perfpilot.config import Settings
from perfpilot.errors import ConfigError
from perfpilot.testing import ScriptedBackend

PY = sys.executable
APP = 'SPEED = "normal"\n\n\ndef answer():\n    return 42\n'


def verdict(metric: str, ratio: float, improved: bool = False, regressed: bool = False, word: str = "") -> dict:
    return {"metric": metric, "ratio": ratio, "ci_low": ratio * 0.95, "ci_high": ratio * 1.05, "p_value": 0.002,
            "runs_a": 5, "runs_b": 5, "threshold": 0.02, "median_a": 1.0, "median_b": ratio,
            "improved": improved, "regressed": regressed, "verdict": word or ("faster" if improved else "slower"),
            "notes": []}


class StandIn:
    """Judges a candidate by what it contains: SPEED = "fast" is 2x faster, "slow" 2x slower,
    "fat" is faster but uses 50% more memory; "noisy" is faster with a memory median 50%
    up whose interval includes no change; "fluke" the same with an interval above 1 from 2
    runs a side, where the rank test cannot be significant; env MODE=fast is 20% faster."""

    def __init__(self) -> None:
        self.calls: list[tuple[RunSpec, RunSpec]] = []

    def __call__(self, a: RunSpec, b: RunSpec, metrics, primary) -> Verification:
        self.calls.append((a, b))
        text_a, text_b = (a.cwd / "app.py").read_text(), (b.cwd / "app.py").read_text()

        def speed(text: str, env: dict) -> float:
            value = 0.5 if any(f'"{w}"' in text for w in ("fast", "fat", "noisy", "fluke")) else 2.0 if '"slow"' in text else 1.0
            return value * (0.8 if env.get("MODE") == "fast" else 1.0)

        ratio = speed(text_b, b.env) / speed(text_a, a.env)
        verdicts = {primary: verdict(primary, ratio, improved=ratio < 0.98, regressed=ratio > 1.02,
                                     word="" if abs(ratio - 1) > 0.02 else "no change")}
        for m in metrics:
            if m != primary:
                rss = 1.5 if '"fat"' in text_b and '"fat"' not in text_a else 1.0
                verdicts[m] = verdict(m, rss, regressed=rss > 1.02, word="larger" if rss > 1.02 else "no change")
                if '"noisy"' in text_b:
                    verdicts[m].update(ratio=1.5, ci_low=0.6, ci_high=2.1, p_value=1.0, verdict="inconclusive")
                if '"fluke"' in text_b:
                    verdicts[m].update(ratio=1.5, ci_low=1.2, ci_high=1.8, p_value=0.333, runs_a=2, runs_b=2,
                                       confidence=0.95, verdict="inconclusive")
        return Verification(verdicts=verdicts, runs=5, values_a=[1.0] * 5, values_b=[ratio] * 5)


def patch_speed(value: str, old: str = "normal") -> str:
    return (f'--- a/app.py\n+++ b/app.py\n@@ -1,4 +1,4 @@\n-SPEED = "{old}"\n+SPEED = "{value}"\n \n \n'
            " def answer():\n")


def reply(*proposals: dict) -> str:
    return json.dumps({"proposals": list(proposals)})


def patch_reply(value: str, old: str = "normal", title: str = "") -> str:
    return reply({"kind": "patch", "title": title or f"speed {value}", "diff": patch_speed(value, old)})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "tests").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "tests" / "check.py").write_text("import sys; sys.path.insert(0, '.'); import app\n"
                                             "assert app.answer() == 42, 'wrong answer'\n")
    return root


def settings(**kw) -> Settings:
    # One test run per candidate: these tests are about the loop; tests/test_agent_gate.py covers the repeats.
    base = dict(run=f"{PY} -c pass", test=f"{PY} tests/check.py", objective="cpu", runs=5, min_runs=5, budget=8,
                stacks=False, plugins=["cpu"], test_repeats=1)
    base.update(kw)
    return Settings(**base)


def optimizer(project: Path, proposer, verify=None, **kw) -> Optimizer:
    return Optimizer(settings(**kw), project, proposer, verify=verify or StandIn(), proposer_name="test")


def test_accept_reject_and_history_flow(project):
    backend = ScriptedBackend().enqueue(
        patch_reply("fast", title="make it fast"),
        patch_reply("slow", old="fast", title="make it slow"),
        reply({"kind": "patch", "title": "break it", "diff": "--- a/app.py\n+++ b/app.py\n@@ -4,2 +4,2 @@\n"
               " def answer():\n-    return 42\n+    return 41\n"}),
        "this is not JSON",
    )
    verify = StandIn()
    result = optimizer(project, LLMProposer(Settings(), backend), verify).run()
    assert [(o.status, o.reason) for o in result.outcomes] == [
        ("accepted", "improved"), ("rejected", "slower"), ("rejected", "tests failed"), ("malformed", "malformed reply")]
    assert "wrong answer" in result.outcomes[2].detail
    # the accepted change became the baseline: the second verification compared fast (A) with slow (B)
    assert result.outcomes[1].verdicts["cpu"]["ratio"] == pytest.approx(4.0)
    # the proposer was told what happened, in order
    last_prompt = backend.history[-1][1]["content"]
    assert "[accepted: improved] make it fast" in last_prompt
    assert "[rejected: tests failed] break it" in last_prompt and "wrong answer" in last_prompt
    assert result.stop_reason.startswith("the proposer has nothing more")
    assert '+SPEED = "fast"' in result.patch and "slow" not in result.patch
    assert result.cumulative["verdict"]["ratio"] == pytest.approx(0.5)
    assert (project / "app.py").read_text() == APP  # the user's tree is untouched


def test_guard_violation_rejects_a_faster_change(project):
    backend = ScriptedBackend().enqueue(patch_reply("fat"))
    result = optimizer(project, LLMProposer(Settings(), backend), guards={"peak_rss": "+10%"},
                       plugins=["cpu", "memory"]).run()
    outcome = result.outcomes[0]
    assert (outcome.status, outcome.reason) == ("rejected", "guard violated")
    assert "peak_rss ratio 1.500 exceeds the allowed +10%" in outcome.detail
    assert result.patch == ""


def test_a_guard_over_its_limit_only_within_its_noise_does_not_reject_and_is_named(project):
    """A guard rejects on evidence (its interval above 1); a median over the limit whose
    interval includes no change -- the sampled peak RSS of a 30 ms run -- is said in the
    outcome instead."""
    backend = ScriptedBackend().enqueue(patch_reply("noisy"))
    result = optimizer(project, LLMProposer(Settings(), backend), guards={"peak_rss": "+10%"},
                       plugins=["cpu", "memory"]).run()
    outcome = result.outcomes[0]
    assert (outcome.status, outcome.reason) == ("accepted", "improved"), outcome.detail
    assert "guard peak_rss ratio 1.500 exceeds the allowed +10%" in outcome.detail
    assert "0.600–2.100 includes no change" in outcome.detail


def test_a_guard_interval_above_1_without_a_significant_rank_test_does_not_reject(project):
    """With 2 runs a side the bootstrap interval lies above 1 whenever both B runs are the
    slower pair (1 time in 6 with no change at all); the rank test cannot be significant
    there, so the guard does not reject, and the outcome says why."""
    backend = ScriptedBackend().enqueue(patch_reply("fluke"))
    result = optimizer(project, LLMProposer(Settings(), backend), guards={"peak_rss": "+10%"},
                       plugins=["cpu", "memory"]).run()
    outcome = result.outcomes[0]
    assert (outcome.status, outcome.reason) == ("accepted", "improved"), outcome.detail
    assert ("guard peak_rss ratio 1.500 exceeds the allowed +10%" in outcome.detail
            and "the rank test with 2 and 2 runs is not significant (p=0.33, needs < 0.05)" in outcome.detail)


def test_no_change_without_measuring(project):
    comment = ('--- a/app.py\n+++ b/app.py\n@@ -1,3 +1,4 @@\n SPEED = "normal"\n+# a comment changes nothing\n \n \n')
    verify = StandIn()
    backend = ScriptedBackend().enqueue(reply({"kind": "patch", "title": "comment", "diff": comment}))
    result = optimizer(project, LLMProposer(Settings(), backend), verify).run()
    assert (result.outcomes[0].status, result.outcomes[0].reason) == ("rejected", "no change")
    assert verify.calls == []


def test_budget_and_consecutive_failures_stop_the_loop(project):
    replies = [patch_reply("slow") for _ in range(10)]
    result = optimizer(project, LLMProposer(Settings(), ScriptedBackend(replies)), budget=3).run()
    assert len(result.outcomes) == 3 and result.stop_reason == "budget spent (3 proposals)"
    result = optimizer(project, LLMProposer(Settings(), ScriptedBackend(replies)), max_failures=2).run()
    assert len(result.outcomes) == 2 and result.stop_reason == "2 proposals in a row failed"


def test_time_budget(project):
    result = optimizer(project, LLMProposer(Settings(), ScriptedBackend([patch_reply("fast")] * 5)),
                       time_budget=1e-9).run()
    assert result.outcomes == [] and result.stop_reason.startswith("time budget spent")


def test_refused_and_did_not_apply_are_recorded(project):
    backend = ScriptedBackend().enqueue(
        reply({"kind": "patch", "title": "edit tests", "diff": "--- a/tests/check.py\n+++ b/tests/check.py\n"
               "@@ -1 +1 @@\n-x\n+y\n"}),
        patch_reply("fast", old="turbo"),
    )
    result = optimizer(project, LLMProposer(Settings(), backend)).run()
    assert [(o.status, o.reason) for o in result.outcomes] == [("refused", "refused"), ("rejected", "did not apply")]
    assert "protected" in result.outcomes[0].detail


def test_tests_failing_at_baseline_stop_with_their_output(project):
    (project / "app.py").write_text(APP.replace("42", "0"))
    with pytest.raises(BaselineTestsFailed, match="tests fail on the unchanged project"):
        optimizer(project, LLMProposer(Settings(), ScriptedBackend())).run()


def test_run_command_failing_at_baseline(project):
    with pytest.raises(BaselineRunFailed, match="exited with 3"):
        optimizer(project, LLMProposer(Settings(), ScriptedBackend()), run=f"{PY} -c 'raise SystemExit(3)'").run()


def test_backend_failure_first_call_raises_later_call_ends_with_error(project):
    down = ScriptedBackend().enqueue(BackendError("cannot reach http://127.0.0.1:9/v1"))
    with pytest.raises(BackendError, match="cannot reach"):
        optimizer(project, LLMProposer(Settings(), down)).run()
    later = ScriptedBackend().enqueue(patch_reply("fast"), BackendError("HTTP 500"))
    result = optimizer(project, LLMProposer(Settings(), later)).run()
    assert result.accepted and result.error == "HTTP 500" and '+SPEED = "fast"' in result.patch


def test_ctrl_c_gives_a_partial_result_and_removes_the_workspace(project):
    class Interrupting(StandIn):
        def __call__(self, a, b, metrics, primary):
            if self.calls:
                raise KeyboardInterrupt
            return super().__call__(a, b, metrics, primary)

    backend = ScriptedBackend().enqueue(patch_reply("fast"), patch_reply("slow", old="fast"))
    opt = optimizer(project, LLMProposer(Settings(), backend), Interrupting())
    result = opt.run()
    assert result.interrupted and result.stop_reason == "interrupted (Ctrl-C)"
    assert len(result.outcomes) == 1 and result.outcomes[0].accepted
    assert '+SPEED = "fast"' in result.patch
    assert not opt.workspace.root.exists()


def test_knob_search_screens_then_combines_winners(project):
    knobs = {"mode": {"env": "MODE", "values": ["normal", "fast"], "default": "normal"},
             "speed": {"config": "speed.json:value", "values": [1, 2]}}
    (project / "speed.json").write_text('{"value": 1}\n')
    s = settings(knobs=knobs)
    result = Optimizer(s, project, KnobProposer(s), verify=StandIn()).run()
    # MODE=fast wins its screening (trial, not adopted); speed=2 makes no difference; then the winner is adopted
    assert [(o.title(), o.status) for o in result.outcomes] == [
        ("try mode=fast", "winner"), ("try speed=2", "rejected"), ("adopt mode=fast", "accepted")]
    assert result.final_state.env == {} and result.final_state.knobs == {"mode": "fast"}
    assert result.patch == ""


def test_knob_search_combination(project):
    knobs = {"mode": {"env": "MODE", "values": ["fast"]}, "extra": {"env": "MODE2", "values": ["x"]}}

    class TwoWinners(StandIn):
        def __call__(self, a, b, metrics, primary):
            self.calls.append((a, b))
            gain = 0.9 ** (len(b.env) - len(a.env))
            return Verification({primary: verdict(primary, gain, improved=gain < 0.98)}, 5, [1.0] * 5, [gain] * 5)

    s = settings(knobs=knobs)
    result = Optimizer(s, project, KnobProposer(s), verify=TwoWinners()).run()
    assert [o.status for o in result.outcomes] == ["winner", "winner", "accepted"]
    assert result.outcomes[-1].proposal.kind == "combined"
    assert result.final_state.knobs == {"mode": "fast", "extra": "x"}


def test_bad_settings_are_config_errors(project):
    with pytest.raises(ConfigError, match="no run command"):
        Optimizer(Settings(), project, None)
    with pytest.raises(ConfigError, match="allowed increase"):
        parse_guards({"peak_rss": "-5%"})
    assert parse_guards({"peak_rss": "+10%", "wall": 0.05}) == {"peak_rss": 0.10, "wall": 0.05}


def test_losing_screening_trials_do_not_end_the_knob_search(project):
    # Five values that make no difference, then the one that helps: with max_failures=2 the
    # search used to stop after two trials and report "no change was proven better".
    knobs = {"noise": {"env": "NOISE", "values": ["a", "b", "c", "d", "e"]},
             "mode": {"env": "MODE", "values": ["fast"]}}
    s = settings(knobs=knobs, max_failures=2, budget=10)
    result = Optimizer(s, project, KnobProposer(s), verify=StandIn()).run()
    assert [o.status for o in result.outcomes] == ["rejected"] * 5 + ["winner", "accepted"]
    assert result.final_state.knobs == {"mode": "fast"}


def test_report_says_how_to_run_with_an_adopted_env_knob(project):
    # The gain of an env knob lives in the environment, not in the patch: the command the
    # user is told to run must set it (it used to print the bare run command).
    from perfpilot.agent import report

    knobs = {"mode": {"env": "MODE", "values": ["normal", "fast"], "default": "normal"}}
    s = settings(knobs=knobs)
    result = Optimizer(s, project, KnobProposer(s), verify=StandIn()).run()
    final = report.build(result)["final"]
    assert final["run_env"] == {"MODE": "fast"} and final["env"] == {}
    assert final["command"] == f"MODE=fast {PY} -c pass"
    assert f"MODE=fast {PY} -c pass" in report.render_html(report.build(result))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_hung_tests_are_stopped_with_every_process_they_started(project):
    # The candidate's tests hang in a child process: the timeout must end the child too,
    # or it keeps running (and burning CPU) through every later measurement.
    # The pid goes to stdout: under the sandbox the tests cannot write outside the workspace.
    (project / "tests" / "hang.py").write_text(
        "import subprocess, sys, time\n"
        "if '\"fast\"' in open('app.py').read():\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "    print('child pid', child.pid, flush=True)\n"
        "    child.wait()\n")
    backend = ScriptedBackend().enqueue(patch_reply("fast"))
    result = optimizer(project, LLMProposer(Settings(), backend), test=f"{PY} tests/hang.py", test_timeout=3).run()
    [outcome] = result.outcomes
    assert (outcome.status, outcome.reason) == ("rejected", "tests failed")
    assert "did not finish within 3s" in outcome.detail
    assert not _alive(int(outcome.detail.split("child pid ")[1].split()[0]))


class _Stages(QuietProgress):
    """The stages the loop announced, in order."""

    def __init__(self) -> None:
        self.stages: list[str] = []

    def stage(self, text: str) -> None:
        self.stages.append(text)


def test_a_context_run_with_too_few_stack_samples_is_profiled_again(project):
    """A run too short for py-spy (python -c pass: no samples) is profiled with stacks up to
    three times for the proposer's context, keeping the run with the most samples; a run
    with samples enough is profiled once."""
    from perfpilot.agent import loop
    from perfpilot.agent.workspace import Workspace

    def baseline_stages(run: str) -> list[str]:
        progress = _Stages()
        opt = Optimizer(settings(run=run, stacks=True, plugins=["cpu"], test=None), project, None, verify=StandIn(),
                        progress=progress)
        opt.workspace = ws = Workspace.create(project, commands=[run])
        try:
            opt._baseline()
        finally:
            ws.cleanup()
        return [s for s in progress.stages if s.startswith("baseline: profiling")]

    short = baseline_stages(f"{PY} -c pass")
    assert len(short) == loop.CONTEXT_ATTEMPTS and "again: 3/3, too few samples" in short[-1], short
    long = baseline_stages(f"{PY} -c \"import time; t = time.time()\nwhile time.time() - t < 1.0: pass\"")
    assert len(long) == 1, long
