"""Issue 14 item 4: nothing won is lost. After one accepted change, a bad reply or a failure
ends the run with one line and a non-zero exit, and the report and patch are written whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from perfpilot.agent.loop import Optimizer
from perfpilot.agent.verification import RunSpec, Verification
from perfpilot.agent.proposers.llm_proposer import LLMProposer
from perfpilot.config import Settings
from perfpilot.testing import ScriptedBackend

PY = sys.executable
BIN = Path(sys.executable).parent
WORK = "N = 4_000_000\nprint(sum(range(N)) > 0)\n"
FAST = "--- a/lib.py\n+++ b/lib.py\n@@ -1,2 +1,2 @@\n-N = 4_000_000\n+N = 40_000\n print(sum(range(N)) > 0)\n"


def completion(text: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]}).encode()


class Server:
    """An OpenAI-compatible endpoint on 127.0.0.1 that serves scripted bodies and logs requests."""

    def __init__(self, bodies: list[tuple[str, bytes]]) -> None:
        self.bodies = list(bodies)
        self.requests: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                kind, body = outer.bodies.pop(0) if outer.bodies else ("application/json", completion("{}"))
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.mark.slow
def test_bad_replies_after_an_accepted_change_keep_it(tmp_path):
    project = tmp_path / "proj"
    (project / "tests").mkdir(parents=True)
    (project / "work.py").write_text(WORK)
    (project / "lib.py").write_text(WORK)
    (project / "run.py").write_text("import lib\n")
    (project / "tests" / "check.py").write_text("print('ok')\n")
    (project / "pyproject.toml").write_text(
        f'[tool.perfpilot]\nrun = "{PY} run.py"\ntest = "{PY} -S tests/check.py"\nobjective = "cpu"\n'
        "runs = 5\nmin_runs = 5\nstacks = false\nplugins = [\"cpu\"]\nmax_failures = 10\n")
    good = json.dumps({"proposals": [{"kind": "patch", "title": "less work", "diff": FAST}]})
    # JSON's \ud800 escape: the client hands perfpilot a str with a lone surrogate
    bad = ('{"proposals": [{"kind": "env", "title": "nul", "name": "OMP_NUM_THREADS", "value": "1\\u0000"},'
           f' {{"kind": "env", "title": "huge", "name": "OMP_NUM_THREADS", "value": "{"1" * 200_000}"}},'
           ' {"kind": "patch", "title": "lone \\ud800 surrogate", "diff": "--- a/lib.py\\n+++ b/lib.py\\n'
           '@@ -1 +1 @@\\n-N = 40_000\\n+N = 4_000 # \\ud800\\n"}]}')
    server = Server([("application/json", completion(good)), ("application/json", completion(bad)),
                     ("text/html", b"<html><body><h1>Welcome to nginx!</h1></body></html>")])
    try:
        done = subprocess.run([str(BIN / "perfpilot"), "optimize", "--backend", "openai", "--base-url", server.url],
                              cwd=project, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PERFPILOT_LLM_RETRIES": "0", "COLUMNS": "200"})
    finally:
        server.close()
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("perfpilot: error:")]
    assert len(errors) == 1 and "stopped early" in errors[0] and "Traceback" not in done.stderr
    out = project / ".perfpilot"
    report = json.loads((out / "optimize-report.json").read_text())
    assert [(p["title"], p["status"]) for p in report["proposals"]][:4] == [
        ("less work", "accepted"), ("nul", "refused"), ("huge", "refused"), ("lone \ufffd surrogate", "rejected")]
    assert "NUL byte" in report["proposals"][1]["detail"] and "200000 characters" in report["proposals"][2]["detail"]
    assert report["error"] and report["stop_reason"].startswith(("stopped early", "the backend failed"))
    assert report["final_tests"] and (out / "optimize-report.html").read_text().rstrip().endswith("</html>")
    patch = (out / "perfpilot.patch").read_text()
    assert "+N = 40_000" in patch
    check = subprocess.run(["git", "apply", "--check", "-"], cwd=project, input=patch, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


class Halving:
    def __call__(self, a: RunSpec, b: RunSpec, metrics, primary) -> Verification:
        changed = (a.cwd / "lib.py").read_text() != (b.cwd / "lib.py").read_text()
        ratio = 0.5 if changed else 1.0
        v = {"metric": primary, "ratio": ratio, "ci_low": ratio * .9, "ci_high": ratio * 1.1, "p_value": .004,
             "confidence": .95, "runs_a": 5, "runs_b": 5, "threshold": .02, "median_a": 1.0, "median_b": ratio,
             "improved": changed, "regressed": False, "verdict": "faster", "notes": []}
        return Verification({primary: v}, 5, [1.0] * 5, [ratio] * 5)


def test_an_unexpected_error_after_an_acceptance_keeps_what_was_won(tmp_path):
    (tmp_path / "lib.py").write_text(WORK)
    backend = ScriptedBackend().enqueue(json.dumps({"proposals": [{"kind": "patch", "title": "t", "diff": FAST}]}),
                                        RuntimeError("the proposer broke"))
    settings = Settings(run=f"{PY} -c pass", objective="cpu", runs=5, min_runs=5, stacks=False, plugins=["cpu"],
                        output_check="ignore")
    result = Optimizer(settings, tmp_path, LLMProposer(Settings(), backend), verify=Halving()).run()
    assert result.error == "RuntimeError: the proposer broke" and result.stop_reason.startswith("stopped early")
    assert result.accepted and "+N = 40_000" in result.patch


def test_a_full_disk_never_leaves_a_truncated_report(tmp_path):
    """Writing under a file-size limit fails (EFBIG, as a full disk would); the earlier report stays whole."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "optimize-report.json").write_text('{"earlier": true}\n')
    script = (
        "import resource, signal, sys\nfrom pathlib import Path\n"
        "from perfpilot.agent import report\nfrom perfpilot.agent.loop import Result\nfrom perfpilot.config import Settings\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nresource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "result = Result(settings=Settings(run='x'), project=Path('.'), started_at=0.0, objective='cpu', guards={},"
        " patch='+' * 10000 + '\\n', notes=['n' * 10000])\n"
        "try:\n    report.write(result, Path(sys.argv[1]))\nexcept report.ReportWriteError as exc:\n"
        "    print(exc)\n    sys.exit(7)\n")
    done = subprocess.run([PY, "-c", script, str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, done.stderr
    assert "could not write the report" in done.stdout and "File too large" in done.stdout
    assert (out / "optimize-report.json").read_text() == '{"earlier": true}\n'
    assert sorted(p.name for p in out.iterdir()) == ["optimize-report.json"]  # no temp file left behind
