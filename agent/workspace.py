"""The isolated workspace: where candidates are applied, never the user's tree.

Layout (a temporary directory, removed by :meth:`Workspace.cleanup`)::

    <tmp>/base        a copy of the project, a private git repo; HEAD = accepted state
    <tmp>/candidate   a git worktree of it where one candidate at a time is applied
    <tmp>/origin      (on demand) a worktree at the original state, for the cumulative check

Both arms of a verification run side by side (baseline in ``base``, candidate in
``candidate``), which interleaved measurement needs. Accepting commits the candidate
and moves ``base`` to it; rejecting resets the candidate.

What a candidate may touch (everything else is refused, with the reason recorded):
paths inside the project only (no ``..``, absolute paths, ``.git``, or symlinks that
resolve outside), files the project tracks (git's index when it is a git project; new
files may be created), nothing that configures how the tests or the interpreter run
(:mod:`perfpilot.agent.policy`), and nothing matching the protected globs: tests, the
run/test harness (files named in the run and test commands), plus the user's
``protected`` setting. A glob with a ``/`` matches the relative path or a trailing part
of it (``*`` crosses folders: ``tests/*`` protects ``pkg/tests/a/b.py``); one without
matches the file name.

Paths are judged the way git applies them: git itself lists what a patch touches
(``git apply --numstat -z``, so C-quoted names such as ``"conft\\145st.py"`` arrive
decoded), and after applying, the candidate is judged by its tree's content against the
accepted state (every file, ignored or not), never by ``git status``, which obeys a
``.gitignore`` the candidate itself could add.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

from perfpilot.agent import config_files, policy
from perfpilot.agent.knobs import Knob, knob_args, knob_env
from perfpilot.agent.proposals import Proposal
from perfpilot.errors import PerfpilotError

DEFAULT_PROTECTED = (
    "tests/*", "test/*", "testing/*", "test_*.py", "*_test.py", "conftest.py",
    "perfpilot.toml", "pyproject.toml", "setup.py", "setup.cfg", "tox.ini", "noxfile.py", ".github/*", ".ci/*",
)
OUTPUT_NAMES = {"optimize-report.json", "optimize-report.html", "perfpilot.patch"}
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".tox", ".nox",
             "node_modules", ".perfpilot", ".ipynb_checkpoints"}
_GIT_IDENTITY = ["-c", "user.name=perfpilot", "-c", "user.email=perfpilot@localhost", "-c", "commit.gpgsign=false",
                 "-c", "core.hooksPath=/dev/null", "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false"]
_DIFF_GIT = re.compile(r"^diff --git (\S+) (\S+)\s*$")
_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$")


class WorkspaceError(PerfpilotError):
    """The workspace could not be set up (git missing, project unreadable...)."""


class Refused(Exception):
    """A candidate was refused before it touched anything (policy)."""


class DidNotApply(Exception):
    """A candidate was allowed but could not be applied (context mismatch, bad key...)."""


@dataclass
class State:
    """What besides the files defines a configuration: env vars and knob values."""

    env: dict[str, str] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> "State":
        return State(dict(self.env), dict(self.knobs))


@dataclass
class Candidate:
    proposal: Proposal
    state: State
    diff: str  # the files' change against the accepted state ("" for env/knob-only)
    changed_files: list[str]


def _git(args: list[str], cwd: Path, *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C",
           "GIT_TERMINAL_PROMPT": "0"}
    try:
        # surrogateescape: git prints paths as raw bytes (-z), which need not be UTF-8.
        result = subprocess.run(["git", *_GIT_IDENTITY, *args], cwd=cwd, env=env, input=input, encoding="utf-8",
                                errors="surrogateescape", capture_output=True)
    except FileNotFoundError:
        raise WorkspaceError("git is not installed", hint="install git; perfpilot uses it to apply and revert changes") from None
    if check and result.returncode != 0:
        raise WorkspaceError(f"git {args[0]} failed in the workspace: {result.stderr.strip().splitlines()[-1:] or ''}")
    return result


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = set()
    for name in names:
        if name in SKIP_DIRS or name in OUTPUT_NAMES or _is_venv(Path(folder, name)):
            skipped.add(name)
    return skipped


def project_tracked_files(project: Path) -> set[str] | None:
    """Files git tracks under ``project`` (relative to it), or None if not a git project."""
    try:
        result = subprocess.run(["git", "ls-files", "-z", "--cached", "--", "."], cwd=project, capture_output=True,
                                text=True, env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        return None
    if result.returncode != 0:
        return None
    return {p for p in result.stdout.split("\0") if p}


def harness_files(commands: Iterable[str | None], project: Path) -> set[str]:
    """Files named in the run/test commands (``bench.py``, ``tests/``): the harness."""
    found: set[str] = set()
    for command in commands:
        if not command:
            continue
        try:
            words = shlex.split(command)
        except ValueError:
            words = command.split()
        for word in words:
            word = word.split("::", 1)[0]  # pytest node ids
            if word.startswith("-") or not word:
                continue
            candidate = (project / word)
            try:
                if candidate.resolve().is_relative_to(project.resolve()) and candidate.exists():
                    rel = candidate.resolve().relative_to(project.resolve()).as_posix()
                    found.add(rel + "/*" if candidate.is_dir() else rel)
            except (OSError, ValueError):
                continue
    return found


def matches(rel: str, globs: Iterable[str]) -> str | None:
    """The first glob that ``rel`` matches (see the module docstring), or None."""
    name = PurePosixPath(rel).name
    for glob in globs:
        pattern = glob[3:] if glob.startswith("**/") else glob
        if "/" in pattern:
            if fnmatch.fnmatchcase(rel, pattern) or fnmatch.fnmatchcase(rel, "*/" + pattern):
                return glob
        elif fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(rel, pattern):
            return glob
    return None


def diff_paths(diff: str) -> tuple[list[str], int]:
    """Every path a unified diff names, and the -p level git apply needs (1 or 0)."""
    raw: list[str] = []
    for line in diff.splitlines():
        match = _DIFF_GIT.match(line)
        if match:
            raw += [match.group(1), match.group(2)]
        elif line.startswith(("--- ", "+++ ")):
            path = line[4:].split("\t", 1)[0].strip()
            if path != "/dev/null":
                raw.append(path)
        elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            raw.append("b/" + line.split(" ", 2)[2].strip())
    if not raw:
        return [], 1
    raw = [p[1:-1] if len(p) > 1 and p.startswith('"') and p.endswith('"') else p for p in raw]
    level = 1 if all(p.startswith(("a/", "b/")) for p in raw) else 0
    paths = []
    for path in raw:
        if path.startswith('"') and path.endswith('"'):
            path = path[1:-1]
        stripped = path[2:] if level == 1 else path
        if stripped not in paths:
            paths.append(stripped)
    return paths, level


def _hunk_body_line(line: str) -> bool:
    return line[:1] in (" ", "+", "-", "\\") or line in ("", "\r")


def recount_hunks(diff: str) -> str:
    """``diff`` with each hunk header's line counts recomputed from the hunk's lines.

    A hunk ends at the next hunk or file header (``@@``, ``diff --git``, or a ``--- ``
    line followed by ``+++ ``) or at a line that cannot belong to a hunk; blank lines
    inside a hunk are blank context (what stripping trailing whitespace makes of them),
    blank lines at its end are not.
    """
    lines = diff.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _HUNK.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        j = i + 1
        while j < len(lines) and _hunk_body_line(lines[j]):
            line = lines[j]
            if line.startswith("--- ") and j + 1 < len(lines) and lines[j + 1].startswith("+++ "):
                break
            j += 1
        end = j
        while end > i + 1 and lines[end - 1] in ("", "\r"):
            end -= 1
        body = lines[i + 1:end]
        old = sum(1 for line in body if line[:1] in (" ", "-") or line in ("", "\r"))
        new = sum(1 for line in body if line[:1] in (" ", "+") or line in ("", "\r"))
        out.append(f"@@ -{match.group(1)},{old} +{match.group(2)},{new} @@{match.group(3)}")
        out.extend(body)
        out.extend(lines[end:j])
        i = j
    return "\n".join(out)


class Workspace:
    """An isolated copy of a project with an accepted state and one candidate slot."""

    def __init__(self, project: Path, root: Path, tracked: set[str] | None, protected: list[str],
                 knobs: Mapping[str, Knob]) -> None:
        self.project = project
        self.root = root
        self.base = root / "base"
        self.candidate_dir = root / "candidate"
        self.origin_dir: Path | None = None
        self.tracked = tracked
        self.protected = protected
        self.knobs = dict(knobs)
        self.state = State()
        self.origin_sha = ""
        self.accepted: list[tuple[str, State]] = []  # (commit, state) after each accepted change

    # -------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, project: str | Path, *, protected: Iterable[str] = (), knobs: Mapping[str, Knob] | None = None,
               commands: Iterable[str | None] = ()) -> "Workspace":
        project = Path(project).resolve()
        if not project.is_dir():
            raise WorkspaceError(f"project directory {project} does not exist")
        root = Path(tempfile.mkdtemp(prefix="perfpilot-ws-"))
        tracked = project_tracked_files(project)
        globs = [*DEFAULT_PROTECTED, *harness_files(commands, project), *protected]
        ws = cls(project, root, tracked, globs, knobs or {})
        try:
            shutil.copytree(project, ws.base, symlinks=True, ignore=_ignore)
            _git(["init", "-q", "-b", "perfpilot"], ws.base)
            # -f: files the project's .gitignore hides (data, build inputs) still belong to the run.
            _git(["add", "-A", "-f", "."], ws.base)
            _git(["commit", "-q", "--allow-empty", "-m", "perfpilot: original state"], ws.base)
            ws.origin_sha = ws.head()
            _git(["worktree", "add", "-q", "--detach", str(ws.candidate_dir), ws.origin_sha], ws.base)
        except BaseException:
            ws.cleanup()
            raise
        return ws

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    def head(self) -> str:
        return _git(["rev-parse", "HEAD"], self.base).stdout.strip()

    # ------------------------------------------------------------ path policy

    def check_path(self, rel: str, *, creating: bool = False, declared: bool = False) -> None:
        """Raise :class:`Refused` when a candidate may not touch ``rel`` (``declared``: a knob's file)."""
        if not rel or rel.strip() != rel:
            raise Refused(f"invalid path {rel!r}")
        if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel) or rel.startswith("~"):
            raise Refused(f"{rel}: absolute path, outside the project")
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        if ".." in parts:
            raise Refused(f"{rel}: reaches outside the project (..)")
        if ".git" in parts:
            raise Refused(f"{rel}: inside .git")
        real_root = os.path.realpath(self.candidate_dir)
        real = os.path.realpath(self.candidate_dir / rel)
        if os.path.commonpath([real_root, real]) != real_root:
            raise Refused(f"{rel}: reaches outside the project through a symlink")
        if (self.candidate_dir / rel).is_symlink():
            raise Refused(f"{rel}: is a symlink; perfpilot edits regular files only")
        # Judged against the accepted state: a file this candidate creates is new, not untracked.
        exists = (self.base / rel).exists() or (self.base / rel).is_symlink()
        if declared:
            return
        try:
            top = parts[0]
            top_exists = (self.base / top).exists() or (self.base / f"{top.removesuffix('.py')}.py").exists()
            policy.check_file(rel, exists=exists, top_exists=top_exists and len(parts) > 1)
        except policy.NotAllowed as exc:
            raise Refused(str(exc)) from None
        glob = matches(rel, self.protected)
        if glob is not None:
            raise Refused(f"{rel}: protected (matches {glob!r}: tests, the run/test harness and perfpilot's "
                          "config are not for candidates to change)")
        if exists and self.tracked is not None and rel not in self.tracked:
            raise Refused(f"{rel}: not tracked by the project (git ls-files); perfpilot only edits tracked files")
        if not exists and not creating and not (self.candidate_dir / rel).exists():
            raise Refused(f"{rel}: no such file in the project")

    # ----------------------------------------------------------- candidates

    def reset_candidate(self) -> None:
        _git(["reset", "-q", "--hard", self.head()], self.candidate_dir)
        _git(["clean", "-q", "-fdx"], self.candidate_dir)

    def prepare(self, proposal: Proposal) -> Candidate:
        """Apply ``proposal`` in the candidate slot (after resetting it).

        Raises :class:`Refused` (policy) or :class:`DidNotApply` (could not apply);
        either way the slot is left clean.
        """
        self.reset_candidate()
        state = self.state.copy()
        try:
            for part in proposal.parts():
                self._apply(part, state)
            changed = self._changed_files()
            for rel in changed:  # whatever the tree now holds that differs must be allowed
                self.check_path(rel, creating=True, declared=self._knob_file(rel, proposal))
        except (Refused, DidNotApply):
            self.reset_candidate()
            raise
        diff = _git(["diff", "--cached", "--binary", "HEAD"], self.candidate_dir).stdout
        return Candidate(proposal, state, diff, changed)

    def _knob_file(self, rel: str, proposal: Proposal) -> bool:
        for part in proposal.parts():
            knob = self.knobs.get(part.knob or "")
            if part.kind == "knob" and knob is not None and knob.kind == "config" and knob.config_file == rel:
                return True
        return False

    def _changed_files(self) -> list[str]:
        """Every path whose content differs from the accepted state, ignored files included.

        Staged with ``-f`` and compared as trees: ``git status`` would obey a ``.gitignore``
        (or ``info/exclude``) and hide a file the candidate added.
        """
        _git(["add", "-A", "-f", "."], self.candidate_dir)
        out = _git(["diff", "--cached", "--name-only", "--no-renames", "-z", "HEAD"], self.candidate_dir).stdout
        return [p for p in out.split("\0") if p]

    def _apply(self, proposal: Proposal, state: State) -> None:
        if proposal.kind == "patch":
            self._apply_patch(proposal.diff or "")
        elif proposal.kind == "config":
            self._apply_config(proposal.file or "", proposal.key or "", proposal.value, knob=False)
        elif proposal.kind == "env":
            name, value = str(proposal.name), str(proposal.value)
            declared = {k.target for k in self.knobs.values() if k.kind == "env"}
            try:
                policy.check_env(name, value, declared)
            except policy.NotAllowed as exc:
                raise Refused(str(exc)) from None
            state.env[name] = value
        elif proposal.kind == "knob":
            knob = self.knobs.get(proposal.knob or "")
            if knob is None:
                known = ", ".join(self.knobs) or "none declared"
                raise Refused(f"unknown knob {proposal.knob!r} (known: {known})")
            try:
                value = knob.check_value(proposal.value)
            except PerfpilotError as exc:
                raise Refused(str(exc)) from None
            state.knobs[knob.name] = value
            if knob.kind == "config":
                self._apply_config(knob.config_file, knob.config_key, value, knob=True)
        else:
            raise Refused(f"unknown proposal kind {proposal.kind!r}")

    def _apply_patch(self, diff: str) -> None:
        diff, level = self._applicable(diff, self.candidate_dir)
        args = ["apply", f"-p{level}", "--whitespace=nowarn"]
        done = _git([*args, "-"], self.candidate_dir, check=False, input=diff)
        if done.returncode != 0:
            raise DidNotApply(f"patch does not apply: {done.stderr.strip()[:300]}")

    def applies_to_origin(self, proposal: Proposal) -> bool | None:
        """Whether a patch proposal would apply to the original project (None: not a patch)."""
        if proposal.kind != "patch" or not proposal.diff:
            return None
        try:
            self._applicable(proposal.diff, self.origin())
        except (DidNotApply, Refused):
            return False
        return True

    def git_paths(self, diff: str, level: int) -> list[str]:
        """The paths ``git apply`` will touch, as git decodes them (quoted names included).

        ``--numstat`` names a rename's or copy's destination only; the same diff read in
        reverse (``-R``) names its source, so both sides are judged.
        """
        paths: list[str] = []
        for reverse in ([], ["-R"]):
            listed = _git(["apply", *reverse, f"-p{level}", "--numstat", "-z", "-"], self.candidate_dir,
                          check=False, input=diff)
            if listed.returncode != 0:
                reason = " ".join(listed.stderr.strip().splitlines()[:2]) or "git apply could not read it"
                raise DidNotApply(f"patch is not a diff git can apply: {reason}")
            for entry in listed.stdout.split("\0"):
                fields = entry.split("\t", 2)
                if len(fields) == 3 and fields[2] and fields[2] not in paths:
                    paths.append(fields[2])
        summary = _git(["apply", f"-p{level}", "--summary", "-"], self.candidate_dir, check=False, input=diff).stdout
        if re.search(r"mode 120000", summary):
            raise Refused("the patch creates a symlink; perfpilot edits regular files only")
        return paths

    def _applicable(self, diff: str, cwd: Path) -> tuple[str, int]:
        """(the diff, recounted if need be; its -p level) once every path is allowed and git says it applies."""
        _, level = diff_paths(diff)
        # LLMs often get hunk line counts wrong. git's own --recount cannot be used: in a
        # diff without "diff --git" lines it swallows the next file's "--- a/x" header
        # into the hunk as a removed line, so every multi-file diff fails.
        recounted = recount_hunks(diff)
        paths: list[str] = []
        unreadable: DidNotApply | None = None
        for text in dict.fromkeys([diff, recounted]):  # either may be what gets applied: judge both
            try:
                paths += [p for p in self.git_paths(text, level) if p not in paths]
            except DidNotApply as exc:
                unreadable = unreadable or exc
        if not paths:
            raise unreadable or DidNotApply("the diff names no files")
        for rel in paths:
            self.check_path(rel, creating=True)
        args = ["apply", f"-p{level}", "--whitespace=nowarn"]
        check = _git([*args, "--check", "-"], cwd, check=False, input=diff)
        if check.returncode != 0:
            second = _git([*args, "--check", "-"], cwd, check=False, input=recounted)
            if recounted == diff or second.returncode != 0:
                reason = " ".join(check.stderr.strip().splitlines()[:3]) or "git apply --check failed"
                raise DidNotApply(f"patch does not apply: {reason}")
            diff = recounted
        return diff, level

    def _apply_config(self, file: str, key: str, value: Any, *, knob: bool) -> None:
        rel = PurePosixPath(file.replace("\\", "/")).as_posix()
        if knob:
            # Declared by the user: policy on where, but protection does not apply.
            if ".." in PurePosixPath(rel).parts or rel.startswith("/"):
                raise Refused(f"{rel}: outside the project")
        else:
            self.check_path(rel)
            try:
                policy.check_config_edit(rel)
            except policy.NotAllowed as exc:
                raise Refused(str(exc)) from None
        path = self.candidate_dir / rel
        if not path.is_file():
            raise DidNotApply(f"{rel}: no such file")
        try:
            config_files.set_value(path, key, value)
        except config_files.ConfigEditError as exc:
            raise DidNotApply(str(exc)) from None

    def is_noop(self, candidate: Candidate) -> bool:
        """True when the candidate changes neither files nor env nor knob values."""
        return not candidate.diff.strip() and candidate.state.env == self.state.env \
            and candidate.state.knobs == self.state.knobs

    def accept(self, candidate: Candidate, message: str) -> str:
        _git(["commit", "-q", "--allow-empty", "-m", message or "perfpilot: accepted change"], self.candidate_dir)
        sha = _git(["rev-parse", "HEAD"], self.candidate_dir).stdout.strip()
        _git(["reset", "-q", "--hard", sha], self.base)
        self.state = candidate.state.copy()
        self.accepted.append((sha, self.state.copy()))
        if self.tracked is not None:
            self.tracked |= set(candidate.changed_files)  # files it created are the project's now
        self.reset_candidate()
        return sha

    def reject(self) -> None:
        self.reset_candidate()

    def rollback(self, keep: int) -> None:
        """Make the accepted state the one after the first ``keep`` accepted changes."""
        del self.accepted[keep:]
        sha, state = self.accepted[-1] if self.accepted else (self.origin_sha, State())
        _git(["reset", "-q", "--hard", sha], self.base)
        self.state = state.copy()
        self.reset_candidate()

    # ------------------------------------------------------------- results

    def combined_diff(self) -> str:
        """Every accepted file change since the original state (paths relative to the project)."""
        return _git(["diff", "--binary", self.origin_sha, "HEAD"], self.base).stdout

    def origin(self) -> Path:
        """A worktree at the original state (made on first use)."""
        if self.origin_dir is None:
            self.origin_dir = self.root / "origin"
            _git(["worktree", "add", "-q", "--detach", str(self.origin_dir), self.origin_sha], self.base)
        return self.origin_dir

    def run_env(self, state: State) -> dict[str, str]:
        return {**knob_env(self.knobs, state.knobs), **state.env}

    def run_args(self, state: State) -> list[str]:
        return knob_args(self.knobs, state.knobs)


def git_dirty(project: Path) -> list[str] | None:
    """Uncommitted changes under ``project`` (our own output files aside); None if not git."""
    result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", "."], cwd=project,
                            capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if result.returncode != 0:
        return None
    dirty = []
    for line in result.stdout.splitlines():
        path = line[3:].strip().strip('"')
        if PurePosixPath(path).name in OUTPUT_NAMES:
            continue
        dirty.append(line)
    return dirty


def apply_to_project(project: Path, diff: str) -> None:
    """Apply the combined patch to the user's (clean) git tree."""
    if not diff.strip():
        return
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=project, capture_output=True, text=True)
    if top.returncode != 0:
        raise WorkspaceError(f"{project} is not a git work tree", hint="--apply needs a clean git tree")
    prefix = project.resolve().relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    args = ["git", "apply", "--whitespace=nowarn"]
    if prefix and prefix != ".":
        args.append(f"--directory={prefix}")
    result = subprocess.run([*args, "-"], cwd=top.stdout.strip(), input=diff, text=True, capture_output=True)
    if result.returncode != 0:
        raise WorkspaceError(f"could not apply the result to {project}: {result.stderr.strip()[:300]}",
                             hint="apply perfpilot.patch by hand with git apply")
