from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from perfpilot.agent import config_files
from perfpilot.agent.knobs import parse_knobs
from perfpilot.agent.proposals import Proposal
from perfpilot.agent.workspace import DidNotApply, Refused, Workspace, apply_to_project, diff_paths, git_dirty, matches
from perfpilot.errors import ConfigError

APP = "def work(n):\n    total = 0\n    for i in range(n):\n        total += i\n    return total\n"
PATCH = ("--- a/app.py\n+++ b/app.py\n@@ -1,5 +1,2 @@\n def work(n):\n-    total = 0\n-    for i in range(n):\n"
         "-        total += i\n-    return total\n+    return n * (n - 1) // 2\n")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "tests").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "bench.py").write_text("import app\nprint(app.work(10))\n")
    (root / "tests" / "test_app.py").write_text("import app\ndef test_work():\n    assert app.work(4) == 6\n")
    (root / "settings.toml").write_text("# tuning\n[data]\nnum_workers = 0  # keep\n")
    (root / "settings.json").write_text('{\n  "threads": 1\n}\n')
    (root / "settings.yaml").write_text("pool:\n  size: 2\n")
    (root / "settings.ini").write_text("[server]\nworkers = 1\n")
    (root / "pyproject.toml").write_text('[tool.perfpilot]\nrun = "python bench.py"\n[tool.other]\nx = 1\n')
    return root


def make(project: Path, **kw) -> Workspace:
    return Workspace.create(project, commands=["python bench.py", "pytest -q tests"], **kw)


def patch(diff: str) -> Proposal:
    return Proposal(kind="patch", title="t", diff=diff)


def test_patch_applies_in_the_copy_never_in_the_project(project):
    with make(project) as ws:
        cand = ws.prepare(patch(PATCH))
        assert "n * (n - 1) // 2" in (ws.candidate_dir / "app.py").read_text()
        assert (ws.base / "app.py").read_text() == APP
        assert cand.changed_files == ["app.py"]
        ws.accept(cand, "closed form")
        assert "n * (n - 1)" in (ws.base / "app.py").read_text()
        assert "+    return n * (n - 1) // 2" in ws.combined_diff()
        root = ws.root
    assert (project / "app.py").read_text() == APP
    assert not root.exists()


def test_reject_restores_the_accepted_state(project):
    with make(project) as ws:
        ws.prepare(patch(PATCH))
        ws.reject()
        assert (ws.candidate_dir / "app.py").read_text() == APP
        assert ws.combined_diff() == ""


def test_patch_with_wrong_context_does_not_apply(project):
    bad = PATCH.replace(" def work(n):", " def work(m):")
    with make(project) as ws, pytest.raises(DidNotApply, match="does not apply"):
        ws.prepare(patch(bad))


def test_patch_without_ab_prefixes_applies_with_p0(project):
    bare = PATCH.replace("--- a/app.py", "--- app.py").replace("+++ b/app.py", "+++ app.py")
    assert diff_paths(bare) == (["app.py"], 0)
    with make(project) as ws:
        assert ws.prepare(patch(bare)).changed_files == ["app.py"]


@pytest.mark.parametrize("path, why", [
    ("../evil.py", "outside the project"),
    ("/etc/passwd", "absolute"),
    ("sub/../../evil.py", "outside"),
    (".git/config", ".git"),
    ("tests/test_app.py", "protected"),
    ("bench.py", "protected"),  # named in the run command: the harness
    ("pyproject.toml", "configures how the tests"),
    ("conftest.py", "configures how the tests"),
])
def test_refused_paths(project, path, why):
    diff = f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-x\n+y\n"
    with make(project) as ws, pytest.raises(Refused, match=why):
        ws.prepare(patch(diff))


def test_symlink_out_of_the_project_is_refused(project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "lib.py").write_text("x\n")
    os.symlink(outside, project / "vendor")
    diff = "--- a/vendor/lib.py\n+++ b/vendor/lib.py\n@@ -1 +1 @@\n-x\n+y\n"
    with make(project) as ws, pytest.raises(Refused, match="symlink"):
        ws.prepare(patch(diff))
    assert (outside / "lib.py").read_text() == "x\n"


def test_user_protected_globs(project):
    (project / "pkg").mkdir()
    (project / "pkg" / "core.py").write_text("x\n")
    diff = "--- a/pkg/core.py\n+++ b/pkg/core.py\n@@ -1 +1 @@\n-x\n+y\n"
    with make(project, protected=["pkg/*"]) as ws, pytest.raises(Refused, match="pkg/\\*"):
        ws.prepare(patch(diff))
    assert matches("a/b/tests/c/d.py", ["tests/*"]) == "tests/*"
    assert matches("src/test_x.py", ["test_*.py"]) == "test_*.py"
    assert matches("src/x.py", ["tests/*", "test_*.py"]) is None


def test_untracked_files_in_a_git_project_are_refused(project):
    git("init", "-q", cwd=project)
    git("add", "app.py", "bench.py", "tests", "pyproject.toml", cwd=project)
    git("commit", "-qm", "init", cwd=project)
    (project / "scratch.py").write_text("x\n")
    diff = "--- a/scratch.py\n+++ b/scratch.py\n@@ -1 +1 @@\n-x\n+y\n"
    with make(project) as ws:
        with pytest.raises(Refused, match="not tracked"):
            ws.prepare(patch(diff))
        # a new file is fine
        new = "--- /dev/null\n+++ b/helper.py\n@@ -0,0 +1 @@\n+X = 1\n"
        assert ws.prepare(patch(new)).changed_files == ["helper.py"]


@pytest.mark.parametrize("file, key, value, check", [
    ("settings.toml", "data.num_workers", 4, lambda t: "num_workers = 4  # keep" in t and "# tuning" in t),
    ("settings.json", "threads", 2, lambda t: json.loads(t) == {"threads": 2} and '\n  "threads"' in t),
    ("settings.yaml", "pool.size", 8, lambda t: "size: 8" in t),
    ("settings.ini", "server.workers", 3, lambda t: "workers = 3" in t),
])
def test_config_edits_by_key(project, file, key, value, check):
    with make(project) as ws:
        cand = ws.prepare(Proposal(kind="config", file=file, key=key, value=value))
        assert check((ws.candidate_dir / file).read_text())
        assert cand.changed_files == [file]
        assert config_files.get_value(ws.candidate_dir / file, key) in (value, str(value))


def test_config_edit_errors_are_did_not_apply(project):
    with make(project) as ws:
        with pytest.raises(DidNotApply, match="no 'nope'"):
            ws.prepare(Proposal(kind="config", file="settings.toml", key="nope.x", value=1))
        with pytest.raises(DidNotApply, match="cannot edit by key"):
            (project / "notes.txt").write_text("x")
            ws.candidate_dir.joinpath("notes.txt").write_text("x")
            ws.prepare(Proposal(kind="config", file="app.py", key="a", value=1))


@pytest.mark.parametrize("key", ["tool.perfpilot.run", "tool.pytest.ini_options.addopts", "tool.other.x"])
def test_config_edits_of_files_pytest_reads_are_refused(project, key):
    # pyproject.toml may hold [tool.pytest.ini_options]: no key of it is a candidate's to change
    with make(project) as ws, pytest.raises(Refused, match="configures how the tests"):
        ws.prepare(Proposal(kind="config", file="pyproject.toml", key=key, value="-k 'not slow'"))


def test_env_and_knobs_change_state_not_files(project):
    knobs = parse_knobs({"threads": {"env": "N_THREADS", "values": ["1", "2"]},
                         "batch": {"arg": "--batch", "values": [16, 32]},
                         "fast": {"arg": "--fast", "values": [False, True]},
                         "workers": {"config": "settings.toml:data.num_workers", "values": [0, 2]}})
    with make(project, knobs=knobs) as ws:
        cand = ws.prepare(Proposal(kind="env", name="OMP_NUM_THREADS", value="2"))
        assert cand.diff == "" and cand.state.env == {"OMP_NUM_THREADS": "2"}
        assert not ws.is_noop(cand)
        cand = ws.prepare(Proposal(kind="combined", changes=[
            Proposal(kind="knob", knob="threads", value="2"), Proposal(kind="knob", knob="batch", value="32"),
            Proposal(kind="knob", knob="fast", value=True), Proposal(kind="knob", knob="workers", value=2)]))
        assert ws.run_env(cand.state) == {"N_THREADS": "2"}
        assert ws.run_args(cand.state) == ["--batch", "32", "--fast"]
        assert "num_workers = 2" in (ws.candidate_dir / "settings.toml").read_text()
        ws.accept(cand, "knobs")
        assert ws.state.knobs["batch"] == 32
        with pytest.raises(Refused, match="not one of its declared values"):
            ws.prepare(Proposal(kind="knob", knob="batch", value=64))
        with pytest.raises(Refused, match="unknown knob"):
            ws.prepare(Proposal(kind="knob", knob="nope", value=1))


def test_noop_is_detected(project):
    with make(project) as ws:
        cand = ws.prepare(Proposal(kind="config", file="settings.json", key="threads", value=1))
        assert ws.is_noop(cand)


def test_knob_declarations_are_validated():
    with pytest.raises(ConfigError, match="exactly one of env, arg or config"):
        parse_knobs({"x": {"values": [1]}})
    with pytest.raises(ConfigError, match="values must be a non-empty list"):
        parse_knobs({"x": {"env": "X", "values": []}})
    with pytest.raises(ConfigError, match="FILE:KEY"):
        parse_knobs({"x": {"config": "train.toml", "values": [1]}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_knobs({"x": {"env": "X", "values": [1], "vals": 2}})


def test_git_dirty_and_apply_to_project(project):
    git("init", "-q", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "init", cwd=project)
    assert git_dirty(project) == []
    (project / "optimize-report.json").write_text("{}")  # our own output does not count
    assert git_dirty(project) == []
    apply_to_project(project, "diff --git a/app.py b/app.py\n" + PATCH)
    assert "n * (n - 1)" in (project / "app.py").read_text()
    assert git_dirty(project) != []


def test_git_dirty_is_none_outside_git(tmp_path):
    assert git_dirty(tmp_path) is None


def test_multi_file_plain_diff_creating_a_file_applies(project):
    # The shape LLMs write most: no "diff --git" lines, a new file then a changed one.
    # git apply --recount used to read the second file's "--- a/app.py" as a removed line.
    diff = ("--- /dev/null\n+++ b/fast.py\n@@ -0,0 +1,2 @@\n+def work(n):\n+    return n * (n - 1) // 2\n"
            "--- a/app.py\n+++ b/app.py\n@@ -1,5 +1 @@\n-def work(n):\n-    total = 0\n-    for i in range(n):\n"
            "-        total += i\n-    return total\n+from fast import work\n")
    with make(project) as ws:
        cand = ws.prepare(patch(diff))
        assert sorted(cand.changed_files) == ["app.py", "fast.py"]
        assert (ws.candidate_dir / "app.py").read_text() == "from fast import work\n"


def test_wrong_hunk_counts_are_recounted_per_file(project):
    (project / "other.py").write_text("A = 1\nB = 2\n")
    wrong = PATCH.replace("@@ -1,5 +1,2 @@", "@@ -1,7 +1,4 @@") + \
        "--- a/other.py\n+++ b/other.py\n@@ -1,2 +1,2 @@\n A = 1\n-B = 2\n+B = 3\n"
    with make(project) as ws:
        cand = ws.prepare(patch(wrong))
        assert sorted(cand.changed_files) == ["app.py", "other.py"]
        assert (ws.candidate_dir / "other.py").read_text() == "A = 1\nB = 3\n"


def test_yaml_and_ini_edits_keep_comments_and_layout(tmp_path):
    yml = tmp_path / "s.yaml"
    yml.write_text("# tuning\npool:\n  size: 2  # per core\n  name: x\nother: [1, 2]\nsize: 9\n")
    config_files.set_value(yml, "pool.size", 4)
    assert yml.read_text() == "# tuning\npool:\n  size: 4  # per core\n  name: x\nother: [1, 2]\nsize: 9\n"
    ini = tmp_path / "s.ini"
    ini.write_text("[server]\n; one per core\nworkers = 1\n[other]\nworkers = 5\n")
    config_files.set_value(ini, "other.workers", 3)
    assert ini.read_text() == "[server]\n; one per core\nworkers = 1\n[other]\nworkers = 3\n"
    config_files.set_value(yml, "pool.new", 1)  # a new key: rewritten by the parser, still correct
    assert config_files.get_value(yml, "pool.new") == 1 and config_files.get_value(yml, "pool.size") == 4
