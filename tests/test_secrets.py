"""Secrets masked by value: the Masker's rules, and `perfpilot optimize` against a real
OpenAI-compatible server on 127.0.0.1 that logs every request body."""

from __future__ import annotations

import json
import os
import secrets as token_source
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from perfpilot.agent.secrets import MASK, Masker, env_file_values, mask_secrets, secret_env_values

BIN = Path(sys.executable).parent


def test_masks_url_credentials_key_shapes_and_random_tokens_but_not_code():
    masker = Masker()
    assert masker.mask_text('DSN = "postgres://admin:Hunt3rPass@db.internal:5432/app"') == \
        'DSN = "postgres://admin:***@db.internal:5432/app"'
    assert masker.mask_text("redis://:pw@cache:6379") == "redis://:***@cache:6379"  # short, but in place
    stripe = "rk_live_" + "51HxQ2eZvKYlo2C0aBcDeFgHiJ"
    assert stripe not in masker.mask_text(f"key = {stripe}")
    token = "Zx8" + token_source.token_urlsafe(30)
    assert masker.mask_text(f"E   got {token} back") == f"E   got {MASK} back"  # unquoted, as test output is
    # learnt: a value found once is masked wherever it appears later, bare
    assert masker.mask_text("then Hunt3rPass alone") == "then *** alone"
    plain = ["for i in range(10): total += i * i", "token = get_token(request)",
             "/tmp/pytest-of-root/pytest-12/test_Masks_dsn0/project/hot.py:12: AssertionError",
             "uuid 123e4567-e89b-12d3-a456-426614174000", "def compute_totals_for_every_value_here(values):",
             "from sk_learn_model_selection import split"]
    assert [masker.mask_text(line) for line in plain] == plain
    assert masker.count == 4
    assert mask_secrets('password: "s3cretvalue"') == 'password: "***"'


def test_environment_values_by_name_or_shape_and_every_env_file_value(tmp_path):
    env = {"DATABASE_URL": "postgres://svc:EnvPw1234@db/app", "MY_SERVICE_TOKEN": "plain-but-named",
           "WEIRD": "https://bot:Zq9sekret@hooks.example/x", "PATH": "/usr/bin:/bin", "PWD": "/work/project",
           "HOME": "/root", "LANG": "C.UTF-8", "GOOGLE_APPLICATION_CREDENTIALS": "/etc/key.json"}
    assert secret_env_values(env) == {"postgres://svc:EnvPw1234@db/app", "EnvPw1234", "plain-but-named",
                                      "Zq9sekret"}
    (tmp_path / ".env").write_text("# comment\nexport API_HOST=internal.example\nDEBUG=1\nNAME='quoted value'\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".env.local").write_text("DB=mysql://u:LocalPw99@h/d\n")
    assert env_file_values(tmp_path) == {"internal.example", "quoted value", "mysql://u:LocalPw99@h/d", "LocalPw99"}
    masker = Masker.for_project(tmp_path, environ=env)
    out = masker.mask_obj({"detail": ["host internal.example", "LocalPw99"], "n": 3})
    assert out == {"detail": ["host ***", "***"], "n": 3} and masker.count == 2


# ------------------------------------------------------------------ end to end

APP = '''\
DSN = "postgres://reporting:{dsn_password}@db.internal:5432/app"


def hot(n):
    total = 0
    for i in range(n):
        total += i * i
    return total
'''
BENCH = "from app import DSN, hot\n\nprint(hot(2000000), DSN.split('@')[1])\n"
TEST = '''\
import os

from app import hot


def test_hot():
    print("DATABASE_URL is", os.environ.get("DATABASE_URL"))
    print("AWS key is", os.environ.get("AWS_SECRET_ACCESS_KEY"))
    assert hot(10) == 285
'''
WRONG = '''\
--- a/app.py
+++ b/app.py
@@ -4,5 +4,5 @@
 def hot(n):
     total = 0
     for i in range(n):
-        total += i * i
+        total += i
     return total
'''


class LoggingChatServer:
    """An OpenAI-compatible chat endpoint: replays replies, keeps every request body raw."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.bodies: list[str] = []
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("content-length", 0))).decode("utf-8")
                outer.bodies.append(raw)
                outer.auth.append(self.headers.get("authorization"))
                text = outer.replies.pop(0) if outer.replies else '{"proposals": []}'
                data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": text}}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.mark.slow
def test_no_secret_reaches_the_llm_or_any_file_written(tmp_path):
    fresh = lambda prefix: prefix + token_source.token_urlsafe(18).replace("-", "x").replace("_", "y")  # noqa: E731
    dsn_password, env_file_password, db_password = fresh("Dsn9"), fresh("Envf7"), fresh("Dbp5")
    aws = "wJ7" + token_source.token_urlsafe(30)[:37]
    stripe = "rk_live_" + token_source.token_hex(12)
    api_key = "sk-test-" + token_source.token_hex(16)
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text(APP.format(dsn_password=dsn_password))
    (project / "test_app.py").write_text(TEST)
    (project / "bench.py").write_text(BENCH)
    (project / ".env").write_text(f"ANALYTICS_DSN=mysql://etl:{env_file_password}@warehouse/db\n"
                                  f"PAYMENTS={stripe}\n")
    (project / "pyproject.toml").write_text(
        '[tool.perfpilot]\nrun = "python bench.py"\ntest = "python -m pytest -q -p no:cacheprovider test_app.py"\n'
        'objective = "cpu"\n')
    wrong = json.dumps({"proposals": [{"kind": "patch", "title": "sum without squares", "rationale": "fewer ops",
                                       "diff": WRONG}]})
    server = LoggingChatServer([wrong])
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PERFPILOT_API_KEY": api_key,
           "DATABASE_URL": f"postgres://app:{db_password}@db.internal/app", "AWS_SECRET_ACCESS_KEY": aws,
           "PERFPILOT_LLM_RETRIES": "0"}
    try:
        done = subprocess.run([str(BIN / "perfpilot"), "optimize", "--backend", "openai", "--model", "m",
                               "--base-url", server.url, "--budget", "2", "--runs", "2", "--min-runs", "2",
                               "--output-dir", str(out), "-q"],
                              cwd=project, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.server.shutdown()
        server.server.server_close()
    assert len(server.bodies) >= 2, done.stderr
    report = json.loads((out / "optimize-report.json").read_text())
    assert [(p["status"], p["reason"]) for p in report["proposals"]][:1] == [("rejected", "tests failed")]
    first, second = server.bodies[0], server.bodies[1]
    # what must have been sent, so the test can fail: the hot function's source, the failing output
    assert "db.internal:5432" in first and "total += i * i" in first
    assert "DATABASE_URL is" in second and "AWS key is" in second and "tests failed" in second
    secret_values = [dsn_password, env_file_password, db_password, aws, stripe, api_key]
    for body in server.bodies:
        assert not [v for v in secret_values if v in body]
    assert set(server.auth) == {f"Bearer {api_key}"}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in before]
    assert {p.name for p in written} >= {"optimize-report.json", "optimize-report.html"}
    for path in written:
        text = path.read_bytes().decode("utf-8", "replace")
        assert not [v for v in secret_values if v in text], path
    assert report["secrets_masked"] >= 3  # the DSN's password, DATABASE_URL (whole and password), the AWS key
    assert "DATABASE_URL is ***" in report["proposals"][0]["detail"]
