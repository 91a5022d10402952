"""Issue 14 items 1-2: the gate's bypasses, each paired with a fast-but-wrong change. Real
workspaces and real git; the CLI run at the end applies nothing to the user's tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perfpilot.agent.knobs import parse_knobs
from perfpilot.agent.policy import PERF_ENV, NotAllowed, check_env
from perfpilot.agent.proposals import Proposal
from perfpilot.agent.workspace import Refused, Workspace

PY = sys.executable
BIN = Path(sys.executable).parent
APP = "def answer():\n    return 42\n"
CHECK = "import sys; sys.path.insert(0, '.'); import app\n\n\ndef test_answer():\n    assert app.answer() == 42\n"
# The fast-but-wrong change every bypass rides with.
WRONG = "--- a/app.py\n+++ b/app.py\n@@ -1,2 +1,2 @@\n def answer():\n-    return 42\n+    return 0\n"


def new_file(path: str, text: str, quoted: str | None = None) -> str:
    lines = text.splitlines()
    name = quoted or f"b/{path}"
    body = "".join(f"+{line}\n" for line in lines)
    return f"--- /dev/null\n+++ {name}\n@@ -0,0 +1,{len(lines)} @@\n{body}"


def edit_file(path: str, old: str, new: str) -> str:
    return f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-{old}\n+{new}\n"


PASS_ALL = "import pytest\n\n\ndef pytest_collection_modifyitems(items):\n    items.clear()\n"
DESELECT = '[pytest]\naddopts = -k "not test_answer"\n'
# (what it tries, the bypass part of the diff, what the refusal must say)
BYPASSES = [
    ("git-quoted name", 'diff --git "a/conft\\145st.py" "b/conft\\145st.py"\nnew file mode 100644\n'
                        + new_file("", PASS_ALL, quoted='"b/conft\\145st.py"'), "conftest.py: configures"),
    (".gitignore hides a conftest", new_file(".gitignore", "conftest.py") + new_file("conftest.py", PASS_ALL),
     "dotfile|conftest.py: configures"),
    ("conftest.py deep down", new_file("pkg/deep/conftest.py", PASS_ALL), "conftest.py: configures"),
    ("pytest.ini", new_file("pytest.ini", DESELECT), "pytest.ini: configures"),
    (".pytest.ini", new_file(".pytest.ini", DESELECT), ".pytest.ini: configures"),
    ("pytest.toml", new_file("pytest.toml", '[pytest]\naddopts = ["-k", "not test_answer"]'), "pytest.toml: configures"),
    ("setup.cfg [tool:pytest]", new_file("setup.cfg", "[tool:pytest]\naddopts = -k 'not test_answer'"), "setup.cfg"),
    ("tox.ini [pytest]", new_file("tox.ini", DESELECT), "tox.ini"),
    ("pyproject addopts", edit_file("pyproject.toml", "[project]", '[tool.pytest.ini_options]\n+addopts = "-x"'),
     "pyproject.toml"),
    ("sitecustomize", new_file("sitecustomize.py", "import builtins"), "sitecustomize.py: configures"),
    ("usercustomize package", new_file("usercustomize/__init__.py", "x = 1"), "usercustomize"),
    (".pth file", new_file("evil.pth", "import os"), "evil.pth: configures"),
    ("noxfile", new_file("noxfile.py", "x = 1"), "noxfile.py"),
    ("CI file", new_file(".github/workflows/ci.yml", "on: push"), "dot-folder"),
    (".gitattributes", new_file(".gitattributes", "*.py -diff"), "dotfile"),
    ("a config file some tool discovers", new_file("pkg/pytest.cfg", "[pytest]"), "new file of a kind"),
    ("a pytest.py that stands in for pytest", new_file("pytest.py", "raise SystemExit(0)"), "shadow the module 'pytest'"),
    ("a package that shadows the stdlib", new_file("json/__init__.py", "x = 1"), "shadow the standard"),
    ("a symlink", "diff --git a/link.py b/link.py\nnew file mode 120000\n--- /dev/null\n+++ b/link.py\n"
                  "@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n", "symlink"),
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "tests").mkdir(parents=True)
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "app.py").write_text(APP)
    (root / "tests" / "test_app.py").write_text(CHECK)
    (root / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    return root


def test_every_bypass_with_a_wrong_change_is_refused_with_its_reason(project):
    with Workspace.create(project, commands=["python -c pass", "pytest -q tests"]) as ws:
        for what, bypass, why in BYPASSES:
            with pytest.raises(Refused, match=why):
                ws.prepare(Proposal(kind="patch", title=what, diff=bypass + WRONG))
            assert (ws.candidate_dir / "app.py").read_text() == APP, what  # nothing was left applied
        # the same wrong change alone does apply: the refusals above are the policy's
        assert ws.prepare(Proposal(kind="patch", title="wrong", diff=WRONG)).changed_files == ["app.py"]


def test_git_is_asked_which_paths_a_patch_touches(project):
    with Workspace.create(project, commands=["python -c pass"]) as ws:
        quoted = 'diff --git "a/conft\\145st.py" "b/conft\\145st.py"\nnew file mode 100644\n' + new_file(
            "", "x = 1", quoted='"b/conft\\145st.py"')
        assert ws.git_paths(quoted, 1) == ["conftest.py"]
        rename = ("diff --git a/app.py b/pkg/conftest.py\nsimilarity index 100%\nrename from app.py\n"
                  "rename to pkg/conftest.py\n")
        assert sorted(ws.git_paths(rename, 1)) == ["app.py", "pkg/conftest.py"]  # both sides of a rename


def test_the_candidate_is_judged_by_its_tree_not_git_status(project):
    # the user's own .gitignore hides conftest.py files; a candidate's would be just as invisible to git status
    (project / ".gitignore").write_text("conftest.py\n*.pth\n")
    with Workspace.create(project, commands=["python -c pass"]) as ws:
        ws.reset_candidate()
        (ws.candidate_dir / "pkg" / "conftest.py").write_text(PASS_ALL)
        (ws.candidate_dir / ".hidden.py").write_text("x = 1\n")
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ws.candidate_dir, capture_output=True,
                                text=True).stdout
        assert "conftest" not in status  # what git status shows...
        assert set(ws._changed_files()) == {"pkg/conftest.py", ".hidden.py"}  # ...and what the gate judges


def test_config_proposals_cannot_reach_test_configuration(project):
    (project / "setup.cfg").write_text("[tool:pytest]\naddopts = -q\n")
    with Workspace.create(project, commands=["python -c pass"]) as ws:
        for file, key in [("pyproject.toml", "tool.pytest.ini_options.addopts"), ("setup.cfg", "tool:pytest.addopts")]:
            with pytest.raises(Refused, match="configures how the tests"):
                ws.prepare(Proposal(kind="config", file=file, key=key, value="-k 'not test_answer'"))


@pytest.mark.parametrize("name, value, why", [
    ("PYTEST_ADDOPTS", "-k 'not test_answer'", "not a declared knob"),
    ("PYTHONOPTIMIZE", "2", "not a declared knob"),
    ("BASH_ENV", "/tmp/x", "not a declared knob"),
    ("LD_AUDIT", "/tmp/x.so", "not a declared knob"),
    ("PYTHONWARNINGS", "ignore", "not a declared knob"),
    ("OMP_NUM_THREADS", "\0" + "1", "NUL byte"),
    ("OMP_NUM_THREADS", "1" * 200_000, "200000 characters"),
    ("OMP_NUM_THREADS", "-1; rm -rf /", "not a value"),
    ("PYTHONMALLOC", "debug", "not a value"),
])
def test_env_proposals_outside_the_allow_list_are_refused(project, name, value, why):
    with Workspace.create(project, commands=["python -c pass"]) as ws, pytest.raises(Refused, match=why):
        ws.prepare(Proposal(kind="env", name=name, value=value))


def test_env_allow_list_and_declared_knobs():
    check_env("OMP_NUM_THREADS", "4", ())
    check_env("MALLOC_ARENA_MAX", "2", ())
    check_env("PYTHONMALLOC", "malloc", ())
    check_env("MY_APP_WORKERS", "8", {"MY_APP_WORKERS"})  # a declared knob's variable
    with pytest.raises(NotAllowed):
        check_env("MY_APP_WORKERS", "8", ())
    assert "PYTEST_ADDOPTS" not in PERF_ENV and not any(n.startswith(("PYTHONPATH", "LD_")) for n in PERF_ENV)
    knobs = parse_knobs({"workers": {"env": "MY_APP_WORKERS", "values": ["1", "8"]}})
    assert knobs["workers"].target == "MY_APP_WORKERS"


@pytest.mark.slow
def test_with_apply_the_users_tree_gains_nothing(project, tmp_path):
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "p"\n[tool.perfpilot]\nrun = "{PY} -c pass"\n'
        f'test = "{PY} -m pytest -q -p no:cacheprovider tests"\nobjective = "wall"\nruns = 2\nmin_runs = 2\n'
        "stacks = false\nbudget = 30\nmax_failures = 30\n")
    replies = [json.dumps({"proposals": [{"kind": "patch", "title": what, "diff": bypass + WRONG}
                                         for what, bypass, _ in BYPASSES[i:i + 8]]})
               for i in range(0, len(BYPASSES), 8)]
    replies.append(json.dumps({"proposals": [{"kind": "env", "title": n, "name": n, "value": v} for n, v in
                                             [("PYTEST_ADDOPTS", "-k nothing"), ("PYTHONOPTIMIZE", "2"),
                                              ("BASH_ENV", "/x"), ("LD_AUDIT", "/x.so")]]
                               + [{"kind": "patch", "title": "wrong alone", "diff": WRONG}]}))
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True)
    before = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if ".git" not in p.parts)
    done = subprocess.run([str(BIN / "perfpilot"), "optimize", "--backend", "mock", "--mock-replies",
                           str(tmp_path / "replies.json"), "--apply"], cwd=project, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    report = json.loads((project / ".perfpilot" / "optimize-report.json").read_text())
    outcomes = [(p["title"], p["status"], p["reason"]) for p in report["proposals"]]
    assert len(outcomes) == len(BYPASSES) + 5
    assert all(status == "refused" for _, status, _ in outcomes[:-1]), outcomes
    assert outcomes[-1][1:] == ("rejected", "tests failed")
    assert all(p["detail"] for p in report["proposals"])  # every refusal says why
    after = sorted(p.relative_to(project).as_posix() for p in project.rglob("*")
                   if ".git" not in p.parts and ".perfpilot" not in p.parts)
    assert after == before and (project / "app.py").read_text() == APP
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=project, capture_output=True,
                            text=True).stdout
    assert status.strip() == "!! .perfpilot/"
