from __future__ import annotations

from pathlib import Path

import pytest

from perfpilot import prompts
from perfpilot.agent.context import Context, classify_bottleneck, estimate_tokens, mask_secrets, target_kind
from perfpilot.agent.knobs import parse_knobs
from perfpilot.agent.outcomes import Outcome
from perfpilot.agent.proposals import Proposal
from perfpilot.profilers.profile import Profile

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def make_project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    root.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (root / "hot.py").write_text(f'API_KEY = "{KEY}"\ndef slow():\n{body}\n    return x1\n')
    (root / ".env").write_text("DB_PASSWORD=hunter2hunter2\n")
    return root


def profile(root: Path, **summary) -> Profile:
    return Profile(
        summary={"wall_s": 2.0, "cpu_user_s": 1.9, "cpu_system_s": 0.05, **summary},
        hotspots=[
            {"function": "slow", "file": str(root / "hot.py"), "line": 30, "self_pct": 80.0, "total_pct": 90.0},
            {"function": "load", "file": str(root / ".env"), "line": 1, "self_pct": 5.0, "total_pct": 5.0},
            {"function": "sorted", "file": "/usr/lib/python3.11/json/decoder.py", "line": 9, "self_pct": 4.0,
             "total_pct": 4.0},
        ],
        host={"memory_bytes": 8 * 2**30},
    )


def context(root: Path, prof: Profile, history=(), budget=12000, knobs=None) -> Context:
    return Context.build(project=root, profile=prof, objective="cpu", guards={"peak_rss": "+10%"},
                         run="python hot.py", test="pytest -q", knobs=parse_knobs(knobs or {}), knob_values={},
                         env={}, history=list(history), files=["hot.py", ".env"], budget_tokens=budget)


def test_hot_spot_source_is_included_with_line_numbers_and_secrets_masked(tmp_path):
    root = make_project(tmp_path)
    messages = context(root, profile(root)).messages()
    text = messages[1]["content"]
    assert messages[0]["role"] == "system" and "proposals" in messages[0]["content"]
    assert "30 |     x27 = 27" in text  # the hot line with its neighbours
    assert KEY not in text and "hunter2" not in text
    assert "(outside the project; not editable)" in text  # stdlib frame named, not quoted
    assert "`.env`" not in text  # secret files are not even listed
    assert "peak_rss ≤ +10%" in text
    assert "CPU-bound" in text


def test_secret_masking_patterns():
    assert mask_secrets(f"key = '{KEY}'") == "key = '***'"
    assert "AKIAABCDEFGHIJKLMNOP" not in mask_secrets("aws AKIAABCDEFGHIJKLMNOP")
    assert mask_secrets('password: "s3cretvalue"') == 'password: "***"'
    assert mask_secrets("Authorization: Bearer abcdefghijklmnopqrstuvwx") == "Authorization: ***"
    assert mask_secrets("total = compute(tokens)") == "total = compute(tokens)"  # no false alarm


def test_history_carries_measured_outcomes_and_failures(tmp_path):
    root = make_project(tmp_path)
    verdict = {"ratio": 0.5, "ci_low": 0.45, "ci_high": 0.55, "runs_a": 6, "runs_b": 6}
    history = [
        Outcome(1, Proposal(kind="patch", title="use a set"), "accepted", "improved", verdicts={"cpu": verdict}),
        Outcome(2, Proposal(kind="patch", title="drop apostrophes"), "rejected", "tests failed",
                "FAILED tests/test_x.py::test_tokenize - AssertionError"),
    ]
    text = context(root, profile(root), history).messages()[1]["content"]
    assert "[accepted: improved] use a set — cpu ratio 0.500 (95% CI 0.450–0.550, 6+6 runs)" in text
    assert "[rejected: tests failed] drop apostrophes" in text and "AssertionError" in text


def test_context_fits_the_token_budget_by_dropping_least_important_first(tmp_path):
    root = make_project(tmp_path)
    history = [Outcome(i, Proposal(kind="patch", title=f"idea {i} " + "x" * 200), "rejected", "slower", "y" * 300)
               for i in range(40)]
    big = context(root, profile(root), history, budget=100000).messages()
    small = context(root, profile(root), history, budget=1500).messages()
    assert estimate_tokens(big) > 2000 > 1550 >= estimate_tokens(small)
    assert estimate_tokens(small) <= 1500 + 50
    assert "earlier proposals not shown" in small[1]["content"]
    assert "idea 39" in small[1]["content"]  # the most recent history survives


def test_bottleneck_classes():
    assert classify_bottleneck(Profile(summary={"wall_s": 1, "cpu_user_s": 0.95}))[0] == "CPU-bound"
    assert classify_bottleneck(Profile(summary={"wall_s": 2, "cpu_user_s": 0.2}))[0] == "waiting (off-CPU)"
    assert classify_bottleneck(Profile(summary={"wall_s": 1, "cpu_user_s": 0.3, "io_read_bytes": 5e8}))[0] == "I/O"
    assert classify_bottleneck(Profile(summary={"wall_s": 1, "gpu_utilization_mean_pct": 95}))[0] == "GPU-bound"
    assert classify_bottleneck(Profile(summary={"wall_s": 1, "gpu_utilization_mean_pct": 20}))[0] == "GPU under-used"
    assert classify_bottleneck(Profile(summary={"wall_s": 1, "cpu_user_s": 1, "peak_rss_bytes": 7e9},
                                       host={"memory_bytes": 8e9}))[0] == "memory"
    native = Profile(summary={"wall_s": 1, "cpu_user_s": 1},
                     hotspots=[{"file": "libopenblas.so", "self_pct": 70}, {"file": "a.py", "self_pct": 20}])
    assert classify_bottleneck(native)[0] == "CPU-bound native"


def test_domain_prompt_by_target_kind(tmp_path):
    root = make_project(tmp_path)
    assert target_kind(profile(root), root, "python hot.py") == "python"
    (root / "train.py").write_text("import torch\n")
    assert target_kind(profile(root), root, "python train.py") == "pytorch"
    assert target_kind(Profile(), tmp_path / "empty", "./server") == "generic"
    assert "membership" in prompts.domain_prompt("python")
    assert prompts.domain_prompt("cobol") == prompts.load("generic")
    with pytest.raises(FileNotFoundError):
        prompts.load("nope")
    assert {"system", "optimize", "python", "generic"} <= set(prompts.available())


def test_knobs_listed_with_current_values(tmp_path):
    root = make_project(tmp_path)
    ctx = context(root, profile(root), knobs={"threads": {"env": "N", "values": ["1", "2"], "default": "1"}})
    assert "threads (env N; values ['1', '2']; default '1'); current: '1'" in ctx.messages()[1]["content"]


def test_whole_messages_are_masked_including_known_secrets_and_env_keys(tmp_path, monkeypatch):
    import dataclasses

    from perfpilot.agent.context import Context
    from perfpilot.profilers.profile import Profile

    monkeypatch.setenv("PERFPILOT_API_KEY", "sk-live-abcdef123456")
    profile = Profile(target={"command": "python app.py --token tok-999999"}, summary={"wall_s": 1.0})
    context = Context.build(project=tmp_path, profile=profile, objective="wall", guards={},
                            run="python app.py --token tok-999999 sk-live-abcdef123456", test="", knobs={},
                            knob_values={}, env={}, history=[], files=[], budget_tokens=2000)
    context = dataclasses.replace(context, known_secrets=("tok-999999",))
    sent = "\n".join(m["content"] for m in context.messages())
    assert "tok-999999" not in sent and "sk-live-abcdef123456" not in sent
    assert "python app.py --token" in sent
