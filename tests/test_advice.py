"""agent.advice: asking the proposer about one finding (pytest --perfpilot-suggest, daemon --propose), and
agent.project_paths: which of a profile's files are the project's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perfpilot.agent.advice import Question, ask
from perfpilot.agent.backends.errors import BackendError
from perfpilot.agent.project_paths import project_relative
from perfpilot.agent.proposers.llm_proposer import LLMProposer
from perfpilot.config import Settings
from perfpilot.testing import ScriptedBackend

GOOD = json.dumps({"proposals": [
    {"kind": "env", "title": "one thread", "rationale": "r", "name": "OMP_NUM_THREADS", "value": "1"},
    {"kind": "knob", "title": "no knob named so", "rationale": "r"}]})


@pytest.fixture
def question(tmp_path: Path) -> Question:
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text("def work():\n    return sum(range(10))\n")
    (project / ".env").write_text("TOKEN=tok-0123456789\n")
    spots = [{"function": "work", "file": str(project / "app.py"), "line": 2, "self_pct": 80.0, "total_pct": 90.0},
             {"function": "leak", "file": str(project / ".env"), "line": 1, "self_pct": 10.0, "total_pct": 10.0},
             {"function": "json.dumps", "file": "/usr/lib/python3/json/__init__.py", "line": 1, "self_pct": 5.0,
              "total_pct": 5.0},
             {"function": "<module>", "file": "<string>", "line": 1, "self_pct": 1.0, "total_pct": 1.0}]
    return Question(project=project, command="python app.py --key pp-secret-42", objective="cpu",
                    bottleneck=(None, "why it is asked"), summary={"wall_s": 2.0, "cpu_user_s": 1.9},
                    hotspots=spots, duration_s=2.0, budget_tokens=4000, pid=4321, secrets=("pp-secret-42",))


def test_the_context_quotes_project_files_only_and_masks_what_must_not_leave(question):
    assert question.files() == ["app.py"]  # .env is the project's but secret; json is not the project's
    context = question.context()
    assert context.profile.target["pid"] == 4321 and context.objective == "cpu"
    assert context.bottleneck[1] == "why it is asked" and context.bottleneck[0]  # the classifier's label kept
    text = "\n".join(m["content"] for m in context.messages())
    assert "return sum(range(10))" in text and "tok-0123456789" not in text and "pp-secret-42" not in text


def test_ok_invalid_and_failed_are_told_apart(question):
    backend = ScriptedBackend([GOOD, "no JSON here", BackendError("down at http://x")])
    proposer = LLMProposer(Settings(), backend)
    ok = ask(proposer, question.context())
    assert ok.status == "ok" and [p["title"] for p in ok.proposals] == ["one thread"]
    assert ok.problems and not ok.error and ok.request_tokens > 0  # the unusable second proposal is noted
    assert backend.history[0] == ok.messages
    invalid = ask(proposer, question.context())
    assert invalid.status == "invalid" and not invalid.proposals and invalid.error == "; ".join(invalid.problems)
    failed = ask(proposer, question.context())
    assert (failed.status, failed.error, failed.failure) == ("failed", "down at http://x", "BackendError")
    exhausted = ask(proposer, question.context())
    assert exhausted.status == "failed" and exhausted.failure == "BackendExhausted"


def test_a_broken_proposer_plugin_is_a_failure_not_a_crash(question):
    class Broken:
        name = "broken"

        def propose(self, context):
            raise RuntimeError("plugin bug")

        def feedback(self, proposal, outcome):
            pass

    answer = ask(Broken(), question.context())
    assert (answer.status, answer.error, answer.failure) == ("failed", "RuntimeError: plugin bug", "RuntimeError")


def test_project_relative(tmp_path: Path):
    project, other = tmp_path / "p", tmp_path / "lib"
    (project / "pkg").mkdir(parents=True)
    other.mkdir()
    (project / "pkg" / "m.py").write_text("")
    assert project_relative(str(project / "pkg" / "m.py"), project) == "pkg/m.py"
    assert project_relative(str(project / "pkg" / ".." / "pkg" / "m.py"), project) == "pkg/m.py"
    assert project_relative("pkg/m.py", project) == "pkg/m.py"  # relative: only when it names a project file
    assert project_relative("pkg/absent.py", project) is None
    assert project_relative(str(other / "x.py"), project) is None
    assert project_relative(str(other / "x.py"), project, [other]) == "x.py"
    for pseudo in ("", "<string>", "<frozen importlib._bootstrap>"):
        assert project_relative(pseudo, project) is None
