"""``--perfpilot-suggest``: the worst regressions go to the optimiser's proposer; its
proposals are printed and written to the JSON report, never applied.

End to end with pytester (a real pytest in a subprocess, the plugin loaded through its
entry point), the ``mock`` backend replaying scripted replies, and the ``openai`` backend
against a real HTTP server on 127.0.0.1 (and against a closed port). Regressions are made
with fixed CPU work slowed 9x and 27x against a 90% threshold on CPU time: a baseline
and a later session are not interleaved, and an unchanged ~3 ms test was seen 1.56x
slower in CPU time between two sessions on this VM, and 2.45x slower when the later
session ran two xdist workers and py-spy on its 2 CPUs. These tests are about what is
asked and printed, not about the verdict engine's sensitivity (test_pytest_plugin.py
and test_stats.py cover that), so the unchanged test is kept below the noise floor and
the regressions far above any drift. No timed assertions.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from perfpilot.config import Settings
from perfpilot.pytest_plugin.report import TestRecord
from perfpilot.pytest_plugin.suggest import (
    Suggester,
    focus_stacks,
    profile_rounds,
    static_hotspots,
    terminal_lines,
    worst_regressions,
)
from perfpilot.agent.backends.errors import BackendError
from perfpilot.testing import ScriptedBackend

pytest_plugins = ["pytester"]

WORK = '''
import os

SLOW = int(os.environ.get("SLOWDOWN", "1"))


def inner(i):
    return i * i % 7


def work(n):
    # fixed work, not a fixed time: its CPU time carries the machine's real noise
    total = 0
    for i in range(n * SLOW):
        total += inner(i)
    return total


def squared(n):
    return work(n * SLOW * SLOW)
'''

TESTS = '''
import work

API_KEY = "sk-live-abcdefghijklmnopqrstuvwxyz0123"  # looks like a key: must never be sent


def test_changed():
    work.work(20_000 * work.SLOW)


def test_worst():
    work.squared(20_000)


def test_unchanged():
    # far below the noise floor: no drift between sessions can make it a regression
    assert sum(range(100)) == 4950
'''

DIFF = ("--- a/work.py\n+++ b/work.py\n@@ -14,3 +14,3 @@\n     for i in range(n * SLOW):\n"
        "-        total += inner(i)\n+        total += i * i % 7\n     return total\n")
GOOD = {"proposals": [{"kind": "patch", "title": "Inline inner() in the hot loop",
                       "rationale": "One Python call per item costs more than the arithmetic.", "diff": DIFF}]}
MALFORMED = "Sure! I would make work() faster by caching things. Hope that helps."
COMPARE = ["--perfpilot-compare-fail=cpu:90%", "--perfpilot-rounds=7", "--perfpilot-json", "out.json"]
LLM_ENV = ("PERFPILOT_BACKEND", "PERFPILOT_MODEL", "PERFPILOT_BASE_URL", "PERFPILOT_MOCK_REPLIES",
           "PERFPILOT_API_KEY", "OPENAI_API_KEY", "PERFPILOT_LLM_RETRIES", "PERFPILOT_CONTEXT_TOKENS")


@pytest.fixture(autouse=True)
def _no_llm_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LLM_ENV:
        monkeypatch.delenv(name, raising=False)


def _project(pytester: pytest.Pytester, pyproject: str = "") -> None:
    pytester.makepyfile(work=WORK, test_regress=TESTS)
    pytester.makefile(".toml", pyproject="[tool.perfpilot]\nllm_retries = 0\n" + pyproject)


def _replies(pytester: pytest.Pytester, *replies: Any, name: str = "replies.json") -> str:
    (pytester.path / name).write_text(json.dumps(list(replies)))
    return name


def _save_baseline(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOWDOWN", "1")
    pytester.runpytest_subprocess("--perfpilot-save", "--perfpilot-rounds=7").assert_outcomes(passed=3)
    monkeypatch.setenv("SLOWDOWN", "3")  # test_changed 9x, test_worst 27x, test_unchanged 1x


def _suggestions(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "out.json").read_text())["suggestions"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------- end to end


def test_worst_regression_gets_proposals_printed_and_never_applied(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _project(pytester, '\n[tool.perfpilot.pytest]\nsuggest_profile = "0.6s"\n')
    _save_baseline(pytester, monkeypatch)
    before = (pytester.path / "work.py").read_text()
    replies = _replies(pytester, GOOD)
    result = pytester.runpytest_subprocess("--perfpilot-suggest", "--perfpilot-suggest-max=1",
                                           "--perfpilot-backend", "mock", "--perfpilot-mock-replies", replies,
                                           *COMPARE)
    # the outcome is the tests' alone: two regressions fail, as they would without --perfpilot-suggest
    result.assert_outcomes(passed=1, failed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*perfpilot: asking llm via mock about the worst 1 regression(s)*",
        "*proposals from llm via mock for significant regressions (worst 1 of 2 regressed tests) -- NOT applied*",
        "*test_regress.py::test_worst: cpu *x: * -> * ms (CI *",  # the baseline may be under 1 ms on a fast CPU
        "*1. [[]patch] Inline inner() in the hot loop*",
        "*why: One Python call per item costs more than the arithmetic.*",
        "*-        total += inner(i)*",
        "*+        total += i * i % 7*",
    ])
    assert (pytester.path / "work.py").read_text() == before  # never applied

    section = _suggestions(pytester)
    assert section["applied"] is False and section["regressed_tests"] == 2
    [entry] = section["requests"]  # --perfpilot-suggest-max=1: only the worst
    assert entry["nodeid"] == "test_regress.py::test_worst" and entry["metric"] == "cpu"
    assert entry["ratio"] > 4 and entry["ci_low"] <= entry["ratio"] <= entry["ci_high"]
    assert entry["status"] == "ok"
    assert entry["proposals"][0]["title"] == "Inline inner() in the hot loop"
    assert entry["proposals"][0]["diff"] == DIFF
    sent = "\n".join(m["content"] for m in entry["request"])
    # the test's source and the source of what it calls, with the key masked
    assert "def test_worst():" in sent and "def work(n):" in sent and "total += inner(i)" in sent
    assert "sk-live-abcdefghijklmnopqrstuvwxyz0123" not in sent and 'API_KEY = "***"' in sent
    assert "significant regression in a test" in sent and entry["finding"] in sent
    if entry["hotspots_from"] == "py-spy":
        # pytest's own frames are cut away: the test function is the root of every stack
        names = [s["function"] for s in entry["hotspots"]]
        assert names[0] == "test_worst" and {"work", "inner"} <= set(names)
        assert not any("_pytest" in str(s["file"]) or "pluggy" in str(s["file"]) for s in entry["hotspots"])
        assert "py-spy" in entry["hotspots_note"]
    else:  # py-spy cannot attach here: the note says why, and the source is sent instead
        assert "not profiled" in entry["hotspots_note"] and entry["hotspots_from"] == "source"


def test_malformed_reply_exhausted_and_unreachable_backends_leave_the_outcome_alone(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # the backend from [tool.perfpilot], as `perfpilot optimize` reads it; mock_replies relative to that file
    _project(pytester, 'backend = "mock"\nmock_replies = "replies.json"\n'
                       '\n[tool.perfpilot.pytest]\nsuggest_profile = 0\n')
    _save_baseline(pytester, monkeypatch)

    _replies(pytester, MALFORMED, {"proposals": [{"kind": "patch", "title": "no diff"}]})
    result = pytester.runpytest_subprocess("--perfpilot-suggest", *COMPARE)
    result.assert_outcomes(passed=1, failed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_regress.py::test_worst: cpu*",
                                 "*hot spots: not profiled (suggest_profile = 0): the test's source*",
                                 "*malformed reply, nothing usable: no JSON object found in the reply*",
                                 "*test_regress.py::test_changed: cpu*",
                                 "*malformed reply, nothing usable: proposal 1 (patch): missing diff*"])
    worst, changed = _suggestions(pytester)["requests"]
    assert (worst["status"], changed["status"]) == ("invalid", "invalid")
    assert worst["proposals"] == [] and "def work(n):" in worst["request"][1]["content"]

    _replies(pytester)  # no scripted reply left: the mock backend is exhausted
    result = pytester.runpytest_subprocess("--perfpilot-suggest", *COMPARE)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*backend failed: the mock backend has no more replies*",
                                 "*not asked: the backend failed on an earlier request*"])

    port = _closed_port()
    result = pytester.runpytest_subprocess("--perfpilot-suggest", "--perfpilot-backend", "openai",
                                           "--perfpilot-base-url", f"http://127.0.0.1:{port}/v1", *COMPARE)
    result.assert_outcomes(passed=1, failed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*backend failed: cannot reach http://127.0.0.1:{port}/v1*",
                                 "*not asked: the backend failed on an earlier request (BackendError)*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    failed, skipped = _suggestions(pytester)["requests"]
    assert failed["status"] == "failed" and skipped["status"] == "skipped" and "request" not in skipped

    # no regression: nothing is asked, so even a dead backend costs nothing. A new
    # baseline of the slow code, then the fast code: the changed tests are 9x and 27x
    # faster, not 1x against a baseline from another session's noise.
    pytester.runpytest_subprocess("--perfpilot-save", "--perfpilot-rounds=7").assert_outcomes(passed=3)
    monkeypatch.setenv("SLOWDOWN", "1")
    result = pytester.runpytest_subprocess("--perfpilot-suggest", "--perfpilot-backend", "openai",
                                           "--perfpilot-base-url", f"http://127.0.0.1:{port}/v1", *COMPARE)
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*perfpilot suggest (llm via openai*): no significant regressions: nothing was asked*"])


class ChatServer:
    """An OpenAI-compatible chat-completions endpoint that records what it was sent."""

    def __init__(self, reply: str) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
                data = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": "tiny",
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_openai_backend_over_http_with_xdist_workers(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Hot spots taken in xdist workers reach the controller, which asks a real
    OpenAI-compatible server; the API key goes in the header and nowhere in the prompt."""
    pytest.importorskip("xdist")
    key = "pp-local-key-7f3a9c"
    _project(pytester, '\n[tool.perfpilot.pytest]\nsuggest_profile = "0.4s"\n')
    (pytester.path / "work.py").write_text(WORK + f"\n# deployed with {key}\n")
    _save_baseline(pytester, monkeypatch)
    monkeypatch.setenv("PERFPILOT_API_KEY", key)
    server = ChatServer(json.dumps(GOOD))
    server.thread.start()
    try:
        result = pytester.runpytest_subprocess("-n", "2", "--perfpilot-suggest", "--perfpilot-backend", "openai",
                                               "--perfpilot-model", "tiny", "--perfpilot-base-url", server.url,
                                               "--perfpilot-suggest-max=1", *COMPARE)
    finally:
        server.server.shutdown()
        server.server.server_close()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*proposals from llm via openai (tiny)*", "*1. [[]patch] Inline inner()*"])
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "tiny"
    assert request["auth"] == f"Bearer {key}"
    sent = "\n".join(m["content"] for m in request["body"]["messages"])
    assert key not in sent and "def work(n):" in sent and "test_worst" in sent
    [entry] = _suggestions(pytester)["requests"]
    assert entry["status"] == "ok" and entry["hotspots_from"] in {"py-spy", "source"} and entry["hotspots"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "perfpilot: --perfpilot-suggest needs an LLM backend: pass --perfpilot-backend openai*"),
        (["--perfpilot-backend", "nope"], "perfpilot: unknown backend 'nope' (known: mock, openai)"),
        (["--perfpilot-backend", "mock"], "perfpilot: --perfpilot-backend mock needs a replies file*"),
        (["--perfpilot-backend", "mock", "--perfpilot-mock-replies", "missing.json"],
         "perfpilot: cannot read mock replies */missing.json*"),
        (["--perfpilot-backend", "openai"], "perfpilot: no API key for the openai backend at https://api.openai.com/v1*"
                                            "PERFPILOT_API_KEY*"),
        (["--perfpilot-backend", "mock", "--perfpilot-suggest-max=0"],
         "perfpilot: --perfpilot-suggest-max must be at least 1, got 0"),
    ],
)
def test_unusable_backend_is_a_one_line_usage_error_before_any_test(pytester: pytest.Pytester, args: list[str],
                                                                     message: str) -> None:
    pytester.makepyfile(test_x="def test_x():\n    open('ran', 'w').close()\n")
    result = pytester.runpytest_subprocess("--perfpilot-suggest", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])
    assert "Traceback" not in result.stderr.str()
    assert not (pytester.path / "ran").exists()


# -------------------------------------------------------------------- units


def _record(nodeid: str, ratio: float, kind: str = "regression", metric: str = "wall") -> TestRecord:
    verdict = {"ratio": ratio, "ci_low": ratio * 0.9, "ci_high": ratio * 1.1, "p_value": 0.001, "median_a": 0.01,
               "median_b": 0.01 * ratio, "runs_a": 5, "runs_b": 5}
    return TestRecord(nodeid, rounds={"wall": [0.01 * ratio] * 5}, outcome="failed",
                      findings=[{"nodeid": nodeid, "metric": metric, "kind": kind, "verdict": verdict, "reason": "",
                                 "subject": ""}])


def test_worst_regressions_orders_by_ratio_and_ignores_noise() -> None:
    records = [_record("a", 1.5), _record("b", 4.0), _record("c", 9.0, kind="noise"), _record("d", 2.0)]
    records[0].findings.append({**_record("a", 6.0, metric="cpu").findings[0]})  # a's worst metric counts
    worst = worst_regressions(records, 2)
    assert [(r.nodeid, f["metric"]) for r, f in worst] == [("a", "cpu"), ("b", "wall")]
    assert worst_regressions(records, 10)[-1][0].nodeid == "d" and len(worst_regressions(records, 10)) == 3


def test_focus_stacks_keeps_the_test_and_its_callees_and_spawned_processes() -> None:
    me, child = os.getpid(), os.getpid() + 1
    test = "/proj/tests/test_a.py"
    collapsed = {
        f'process {me}:"pytest";main (/venv/_pytest/main.py:10);test_a ({test}:5);work (/proj/work.py:9)': 7,
        f'process {me}:"pytest";main (/venv/_pytest/main.py:10);runtestprotocol (/venv/_pytest/runner.py:3)': 50,
        f'process {me}:"pytest";TestA.test_a ({test}:12);helper (/proj/work.py:30)': 2,
        f'process {me}:"pytest";test_a (/proj/other.py:1)': 4,  # same name, another file
        f'process {child}:"python -c x";<module> (<string>:1)': 3,
    }
    focused = focus_stacks(collapsed, function="test_a", file=test, pid=me)
    assert focused == {f"test_a ({test}:5);work (/proj/work.py:9)": 7,
                       f"TestA.test_a ({test}:12);helper (/proj/work.py:30)": 2,
                       f'process {child}:"python -c x";<module> (<string>:1)': 3}


def test_profile_rounds_samples_the_callees_of_a_function_in_this_process(tmp_path: Path) -> None:
    module = tmp_path / "hot.py"
    module.write_text("def leaf(n):\n    return sum(i * i for i in range(n))\n\n\n"
                      "def caller():\n    for _ in range(20):\n        leaf(20_000)\n")
    namespace: dict[str, Any] = {}
    exec(compile(module.read_text(), str(module), "exec"), namespace)  # noqa: S102 - our own test module
    profiled = profile_rounds(namespace["caller"], function="caller", file=str(module), seconds=0.8, project=tmp_path)
    assert profiled.rounds >= 1
    if not profiled.hotspots:
        pytest.skip(f"py-spy cannot sample this process here: {profiled.note}")
    names = [s["function"] for s in profiled.hotspots]
    # everything above caller() (this test, pytest) is cut away; below it, leaf and its generator
    assert "caller" in names and "leaf" in names and "test_profile_rounds" not in " ".join(names)
    assert all(s["file"] == str(module) or not s["file"].startswith(str(tmp_path.parent)) for s in profiled.hotspots)
    assert profiled.samples > 0 and "py-spy" in profiled.note


def test_static_hotspots_are_the_test_and_the_project_functions_it_names(tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text("def helper(x):\n    return x * 2\n\n\nclass Box:\n    pass\n")
    (tmp_path / "test_m.py").write_text("import json\nimport lib\nfrom lib import Box\n\n\n"
                                        "def test_m():\n    assert lib.helper(2) == 4\n    Box()\n"
                                        "    json.dumps({})\n")
    module = types.ModuleType("test_m")
    module.__file__ = str(tmp_path / "test_m.py")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        exec(compile((tmp_path / "test_m.py").read_text(), module.__file__, "exec"), module.__dict__)  # noqa: S102
        spots = static_hotspots(module.test_m, tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lib", None)
    assert [s["function"] for s in spots] == ["test_m", "helper", "Box"]  # json is not the project's
    assert spots[0]["total_pct"] == 100.0 and all(Path(s["file"]).parent == tmp_path for s in spots)


def test_context_masks_secrets_and_fits_the_token_budget(tmp_path: Path) -> None:
    (tmp_path / "work.py").write_text("TOKEN = 'ghp_abcdefghijklmnopqrstuvwx1234'\n" + "x = 1\n" * 400
                                      + "def work():\n    return 'pp-known-secret-99'\n")
    record = _record("test_a.py::test_a[pp-known-secret-99]", 3.0)
    record.hotspots = [{"function": "work", "file": str(tmp_path / "work.py"), "line": 402, "self_pct": 90.0,
                        "total_pct": 90.0}, {"function": "<module>", "file": str(tmp_path / "work.py"), "line": 1,
                                             "self_pct": 1.0, "total_pct": 1.0}]
    record.hotspots_note = "py-spy"
    backend = ScriptedBackend([json.dumps(GOOD)])
    from perfpilot.agent.proposers.llm_proposer import LLMProposer

    settings = Settings(backend="scripted", context_tokens=1500)
    suggester = Suggester(settings, LLMProposer(settings, backend), "llm via scripted", tmp_path,
                          secrets=("pp-known-secret-99",))
    section = suggester.ask([record], limit=3)
    [entry] = section["requests"]
    assert entry["status"] == "ok" and entry["proposals"][0]["kind"] == "patch"
    sent = "\n".join(m["content"] for m in backend.history[0])
    assert "pp-known-secret-99" not in sent and "ghp_abcdefghijklmnopqrstuvwx1234" not in sent
    assert "return '***'" in sent and "test_a.py::test_a[***]" in sent
    assert len(sent) <= 1500 * 4 + 200  # the budget (4 characters a token), whatever the source's length
    assert suggester.context(record, record.findings[0]).known_secrets == ("pp-known-secret-99",)


def test_a_failing_backend_is_recorded_and_the_rest_skipped(tmp_path: Path) -> None:
    from perfpilot.agent.proposers.llm_proposer import LLMProposer

    backend = ScriptedBackend([BackendError("cannot reach http://127.0.0.1:9/v1: ConnectionRefusedError")])
    settings = Settings(backend="scripted")
    suggester = Suggester(settings, LLMProposer(settings, backend), "llm via scripted", tmp_path)
    section = suggester.ask([_record("a", 2.0), _record("b", 3.0)], limit=3)
    assert [(e["nodeid"], e["status"]) for e in section["requests"]] == [("b", "failed"), ("a", "skipped")]
    assert len(backend.history) == 1  # the dead backend was asked once, not once per regression
    lines = [text for text, _ in terminal_lines(section)]
    assert any("backend failed: cannot reach http://127.0.0.1:9/v1" in line for line in lines)


def test_html_report_shows_proposals_escaped() -> None:
    from perfpilot.pytest_plugin.html import render

    hostile = {"kind": "patch", "title": "<script>alert(1)</script>", "rationale": "x < y & z",
               "diff": "--- a/w.py\n+++ b/w.py\n@@ -1 +1 @@\n-<img src=x onerror=alert(1)>\n+ok\n"}
    doc = {"meta": {}, "tests": [], "summary": {}, "findings": [],
           "suggestions": {"backend": "llm via mock", "requests": [
               {"nodeid": "t.py::test_a", "finding": "cpu 3.00x", "status": "ok", "proposals": [hostile]},
               {"nodeid": "t.py::test_b", "finding": "cpu 2.00x", "status": "invalid", "error": "not JSON",
                "proposals": []}]}}
    page = render(doc)
    assert "Proposals for the worst regressions" in page and "not applied" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "invalid: not JSON" in page
    assert "Proposals for the worst" not in render({**doc, "suggestions": None})
