"""The openai backend against a real HTTP server on 127.0.0.1 speaking chat-completions."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from perfpilot.agent.backends.errors import BackendError, BackendExhausted
from perfpilot.agent.backends.mock_backend import MockBackend
from perfpilot.agent.backends.openai_backend import OpenAIBackend
from perfpilot.config import Settings
from perfpilot.errors import ConfigError
from perfpilot.registry import build_plugin_manager
from perfpilot.testing import ScriptedBackend

MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "make it faster"}]


class ChatServer:
    """Replies from a script of (status, body) pairs; records every request."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict]] = []
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
                status, payload = outer.script.pop(0) if outer.script else (200, completion("default"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status in (429, 500, 503):
                    self.send_header("retry-after-ms", "10")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def completion(text: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


@pytest.fixture
def server():
    srv = ChatServer()
    srv.thread.start()
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


def backend(url: str, **env: str) -> OpenAIBackend:
    settings = Settings(base_url=url, model="tiny", llm_timeout=5, llm_retries=3)
    return OpenAIBackend(settings, environ=env)


def test_reply_text_and_request_shape(server):
    server.script.append((200, completion('{"proposals": []}')))
    reply = backend(server.url, PERFPILOT_API_KEY="pp-key").complete(MESSAGES)
    assert reply == '{"proposals": []}'
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "tiny" and request["body"]["messages"] == MESSAGES
    assert request["auth"] == "Bearer pp-key"


def test_perfpilot_key_wins_over_openai_key(server):
    backend(server.url, PERFPILOT_API_KEY="mine", OPENAI_API_KEY="theirs").complete(MESSAGES)
    assert server.requests[0]["auth"] == "Bearer mine"


def test_retries_with_backoff_on_429_and_5xx(server):
    server.script += [(429, error("slow down", "rate_limit")), (503, error("busy", "overloaded")),
                      (200, completion("ok"))]
    assert backend(server.url).complete(MESSAGES) == "ok"
    assert len(server.requests) == 3


def test_rate_limit_that_persists_is_a_clear_error(server):
    server.script += [(429, error("slow down", "rate_limit"))] * 4
    with pytest.raises(BackendError, match="rate limited .* after 3 retries"):
        backend(server.url).complete(MESSAGES)
    assert len(server.requests) == 4


def test_auth_failure_is_a_clear_error_without_retries(server):
    server.script.append((401, error("Incorrect API key", "invalid_api_key")))
    with pytest.raises(BackendError, match="authentication failed") as info:
        backend(server.url).complete(MESSAGES)
    assert "PERFPILOT_API_KEY" in str(info.value)
    assert len(server.requests) == 1


def test_model_not_found_is_a_clear_error(server):
    server.script.append((404, error("The model `tiny` does not exist", "model_not_found")))
    with pytest.raises(BackendError, match="model 'tiny' not found"):
        backend(server.url).complete(MESSAGES)


def test_empty_reply_is_an_error(server):
    server.script.append((200, completion("")))
    with pytest.raises(BackendError, match="empty reply"):
        backend(server.url).complete(MESSAGES)


def test_unreachable_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(base_url=f"http://127.0.0.1:{port}/v1", llm_timeout=2, llm_retries=0)
    with pytest.raises(BackendError, match=f"cannot reach http://127.0.0.1:{port}/v1"):
        OpenAIBackend(settings, environ={}).complete(MESSAGES)


def test_remote_endpoint_without_key_says_how_to_set_one():
    with pytest.raises(BackendError, match="no API key") as info:
        OpenAIBackend(Settings(base_url="https://api.example.com/v1"), environ={})
    assert "PERFPILOT_API_KEY" in str(info.value)


def test_mock_backend_replays_file_then_is_exhausted(tmp_path: Path):
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(["first", {"proposals": []}]))
    mock = MockBackend(Settings(mock_replies=str(path)))
    assert mock.complete(MESSAGES) == "first"
    assert json.loads(mock.complete(MESSAGES)) == {"proposals": []}
    with pytest.raises(BackendExhausted):
        mock.complete(MESSAGES)
    assert len(mock.history) == 3


def test_mock_backend_bad_input(tmp_path: Path):
    with pytest.raises(ConfigError, match="--mock-replies"):
        MockBackend(Settings())
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        MockBackend(Settings(mock_replies=str(tmp_path / "bad.json")))
    (tmp_path / "obj.json").write_text('{"x": 1}')
    with pytest.raises(ConfigError, match="expected a JSON list"):
        MockBackend(Settings(mock_replies=str(tmp_path / "obj.json")))


def test_scripted_backend_enqueue_history_and_errors():
    scripted = ScriptedBackend().enqueue("a", BackendError("down"))
    assert scripted.complete(MESSAGES) == "a"
    with pytest.raises(BackendError, match="down"):
        scripted.complete(MESSAGES)
    assert scripted.history == [MESSAGES, MESSAGES]


def test_builtins_register_through_the_hooks():
    plugins = build_plugin_manager(load="")
    assert {"openai", "mock"} <= set(plugins.backends())
    assert {"llm", "knobs"} <= set(plugins.proposers())
    assert plugins.backends()["openai"].plugin == "openai_backend"


def test_openai_is_imported_only_when_the_backend_is_used():
    code = ("import sys; from perfpilot.registry import build_plugin_manager; import perfpilot.cli.profile; "
            "build_plugin_manager().backends(); print('openai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_builtins_are_what_the_protocols_describe(server, tmp_path: Path):
    from perfpilot.agent.backends import Backend
    from perfpilot.agent.proposers import Proposer

    replies = tmp_path / "replies.json"
    replies.write_text("[]")
    settings = Settings(mock_replies=str(replies), knobs={"t": {"env": "T", "values": ["1", "2"]}})
    plugins = build_plugin_manager(load="")
    made = [plugins.backends()["mock"].factory(settings), backend(server.url), ScriptedBackend()]
    assert all(isinstance(b, Backend) for b in made)
    proposers = [plugins.proposers()[name].factory(settings, made[0]) for name in ("llm", "knobs")]
    assert all(isinstance(p, Proposer) for p in proposers)
    assert not isinstance(object(), Backend) and not isinstance(made[0], Proposer)


def test_the_openai_backend_keeps_no_record_of_requests(server):
    # a daemon asks for as long as it runs: nothing may grow with each request
    server.script = [(200, completion(f"reply {i}")) for i in range(5)]
    b = backend(server.url)

    def sizes() -> dict[str, int]:
        return {k: len(v) for k, v in vars(b).items() if isinstance(v, (list, dict, set, tuple))}

    before = sizes()
    for i in range(5):
        assert b.complete(MESSAGES) == f"reply {i}"
    assert sizes() == before
