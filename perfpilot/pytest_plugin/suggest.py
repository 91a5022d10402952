"""``--perfpilot-suggest``: the worst significant regressions of a ``--perfpilot-compare``
session go to the optimiser's LLM proposer; its proposals are printed, never applied.

    pytest --perfpilot-suggest --perfpilot-backend openai --perfpilot-model gpt-4.1   # key in PERFPILOT_API_KEY
    pytest --perfpilot-suggest --perfpilot-backend openai --perfpilot-base-url http://127.0.0.1:8000/v1
    pytest --perfpilot-suggest --perfpilot-backend mock --perfpilot-mock-replies replies.json

``--perfpilot-suggest`` implies ``--perfpilot-compare``. The backend is chosen exactly as
``perfpilot optimize`` chooses it (:func:`perfpilot.agent.proposers.choose_proposer`): the
``--perfpilot-backend/-model/-base-url/-mock-replies`` flags, else ``backend``, ``model``,
``base_url``, ``mock_replies`` under ``[tool.perfpilot]`` or ``PERFPILOT_BACKEND``...; the
key from ``PERFPILOT_API_KEY``/``OPENAI_API_KEY``. No backend is a usage error before any
test runs, and so is a backend that cannot be built (no key, unknown name, bad replies file).

What is sent, per regressed test (the worst ``suggest_max``, 3 by default, by ratio):
the optimiser's own :class:`~perfpilot.agent.context.Context` -- the regression (metric,
baseline and current medians, ratio with its CI, p) as the bottleneck, the test's
figures as telemetry, and hot spots with their source:

* profiled: while the regressed test's fixtures are still set up, the test is called
  again for ``suggest_profile`` seconds (1 s by default; 0 turns this off) with py-spy
  attached to the pytest process (:mod:`perfpilot.profilers.stacks`, 250 Hz). Stacks
  are cut to the test function and what it calls (pytest's own frames are dropped;
  processes the test spawned are kept), then ranked by :mod:`perfpilot.profilers.hotspots`.
  These rounds are never measured. At most ``3 x suggest_max`` tests are profiled per
  process, and only while a regression is among the worst seen so far.
* otherwise (py-spy missing or refused, no samples, a unittest/doctest item, over the cap):
  the test function's source and that of the project's functions it names.

Secrets are masked as the optimiser masks them (secret files never quoted, key-like
strings masked), then once more over whole messages, including any API key from the
environment. Each request fits ``context_tokens`` (12000 by default). The messages sent
are kept in the JSON report under ``suggestions.requests[].request``.

A backend that fails (unreachable, auth, rate limit, out of scripted replies) or a reply
nothing can be used from is reported in the summary and the JSON; the session's outcome
and exit status are those of the tests alone. After a backend failure the remaining
requests are skipped rather than each waiting for the same dead server.
"""

from __future__ import annotations

import inspect
import os
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from perfpilot.agent.advice import Question, ask
from perfpilot.agent.context import Context
from perfpilot.agent.project_paths import project_relative
from perfpilot.agent.proposers import Proposer
from perfpilot.config import Settings
from perfpilot.errors import ConfigError
from perfpilot.pytest_plugin.report import TestRecord

PROFILE_RATE_HZ = 250
TOP_HOTSPOTS = 12
MAX_NAMED_FUNCTIONS = 6
NO_BACKEND = (
    "--perfpilot-suggest needs an LLM backend: pass --perfpilot-backend openai (key in PERFPILOT_API_KEY; "
    "--perfpilot-base-url http://127.0.0.1:8000/v1 for a local server) or set backend = \"openai\" under "
    "[tool.perfpilot] (--perfpilot-backend mock --perfpilot-mock-replies FILE replays scripted replies)"
)
NO_REPLIES = ("--perfpilot-backend mock needs a replies file: pass --perfpilot-mock-replies FILE (a JSON list of "
              "reply strings) or set mock_replies under [tool.perfpilot]")


# ------------------------------------------------------------------ backend


@dataclass
class Suggester:
    """The configured proposer and what it needs to build each request."""

    settings: Settings
    proposer: Proposer
    description: str
    project: Path
    secrets: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, project: Path, *, invocation_dir: Path, backend: str | None = None,
                     model: str | None = None, base_url: str | None = None, mock_replies: str | None = None,
                     environ: Mapping[str, str] | None = None) -> "Suggester":
        """Settings and backend as ``perfpilot optimize`` has them; ConfigError/BackendError when unusable."""
        from perfpilot.agent.backends.openai_backend import KEY_VARIABLES
        from perfpilot.agent.proposers import choose_proposer
        from perfpilot.config import load_settings
        from perfpilot.registry import build_plugin_manager

        environ = os.environ if environ is None else environ
        replies = str((invocation_dir / mock_replies).resolve()) if mock_replies else None
        settings = load_settings(cwd=project, environ=environ, overrides={
            "backend": backend, "model": model, "base_url": base_url, "mock_replies": replies})
        if not settings.backend:
            raise ConfigError(NO_BACKEND)
        if settings.backend == "mock" and not settings.mock_replies:
            raise ConfigError(NO_REPLIES)
        if settings.mock_replies and not Path(settings.mock_replies).is_absolute() and settings.source:
            settings = settings.replace(mock_replies=str(Path(settings.source).parent / settings.mock_replies))
        if settings.backend == "mock" and not Path(settings.mock_replies or "").is_file():
            raise ConfigError(f"cannot read mock replies {settings.mock_replies}: no such file",
                              hint="check --perfpilot-mock-replies or mock_replies under [tool.perfpilot]")
        proposer, description = choose_proposer(settings, build_plugin_manager(), "llm")
        secrets = tuple(v for name in KEY_VARIABLES if len(v := environ.get(name, "").strip()) >= 6)
        return cls(settings, proposer, description, project, secrets)

    def ask(self, records: Iterable[TestRecord], *, limit: int,
            on_request: Callable[[int], None] | None = None) -> dict[str, Any]:
        """The ``suggestions`` section of the report: one request per regressed test, worst first."""
        worst = worst_regressions(records, limit)
        section: dict[str, Any] = {"backend": self.description, "applied": False, "requests": [],
                                   "regressed_tests": count_regressed(records)}
        if not worst:
            section["note"] = "no significant regressions: nothing was asked"
            return section
        if on_request is not None:
            on_request(len(worst))
        failed = ""
        for record, finding in worst:
            entry = request_entry(record, finding)
            section["requests"].append(entry)
            if failed:
                entry.update(status="skipped", error=f"not asked: the backend failed on an earlier request ({failed})")
                continue
            answer = ask(self.proposer, self.context(record, finding))
            entry.update(request=answer.messages, request_tokens=answer.request_tokens, status=answer.status,
                         error=answer.error, proposals=answer.proposals, problems=answer.problems,
                         seconds=answer.seconds)
            failed = answer.failure
        return section

    def question(self, record: TestRecord, finding: Mapping[str, Any]) -> Question:
        where = f"`{record.nodeid}`" + (f" (measured callable `{finding['subject']}`)" if finding.get("subject") else "")
        why = (f"{where} is significantly worse than this machine's saved baseline: {describe(finding)}. "
               f"Hot spots: {record.hotspots_note or 'none'}. The test itself must not change: find what in the code "
               "it exercises makes it slower, and propose changes to that code that win the time back.")
        return Question(project=self.project, command=f"python -m pytest {record.nodeid}",
                        objective=str(finding["metric"]), bottleneck=("significant regression in a test", why),
                        summary=record_summary(record, finding), hotspots=list(record.hotspots),
                        duration_s=float(record.figure("wall") or 0.0), test="python -m pytest",
                        budget_tokens=self.settings.context_tokens, secrets=self.secrets)

    def context(self, record: TestRecord, finding: Mapping[str, Any]) -> Context:
        return self.question(record, finding).context()


# --------------------------------------------------------------- regressions


def _regressions(record: TestRecord) -> list[dict[str, Any]]:
    return [f for f in record.findings if f.get("kind") == "regression"]


def _ratio(finding: Mapping[str, Any]) -> float:
    ratio = (finding.get("verdict") or {}).get("ratio")
    return float(ratio) if isinstance(ratio, (int, float)) else 0.0


def worst_finding(record: TestRecord) -> dict[str, Any] | None:
    regressions = _regressions(record)
    return max(regressions, key=_ratio) if regressions else None


def count_regressed(records: Iterable[TestRecord]) -> int:
    return sum(1 for r in records if _regressions(r))


def worst_regressions(records: Iterable[TestRecord], limit: int) -> list[tuple[TestRecord, dict[str, Any]]]:
    """(record, its worst regression), tests ordered by that regression's ratio, worst first."""
    pairs = [(r, f) for r in records if (f := worst_finding(r)) is not None]
    pairs.sort(key=lambda rf: _ratio(rf[1]), reverse=True)
    return pairs[:max(0, limit)]


def describe(finding: Mapping[str, Any]) -> str:
    from perfpilot.pytest_plugin.compare import Finding

    return Finding(**{k: finding[k] for k in ("nodeid", "metric", "kind", "verdict", "reason", "subject")}).describe()


def request_entry(record: TestRecord, finding: Mapping[str, Any]) -> dict[str, Any]:
    v = finding.get("verdict") or {}
    return {"nodeid": record.nodeid, "subject": finding.get("subject", ""), "metric": finding["metric"],
            "ratio": v.get("ratio"), "ci_low": v.get("ci_low"), "ci_high": v.get("ci_high"),
            "p_value": v.get("p_value"), "finding": describe(finding), "hotspots_from": record.hotspots_from,
            "hotspots_note": record.hotspots_note,
            "hotspots": [{k: s.get(k) for k in ("function", "file", "line", "self_pct", "total_pct")}
                         for s in record.hotspots],
            "status": "", "error": "", "proposals": [], "problems": []}


def record_summary(record: TestRecord, finding: Mapping[str, Any]) -> dict[str, Any]:
    """The test's figures and the regression's numbers, as the context's telemetry."""
    summary: dict[str, Any] = {}
    names = {"wall": "wall_s", "cpu": "cpu_s_incl_children", "peak_rss": "peak_rss_growth_bytes",
             "io_read": "io_read_bytes", "io_write": "io_write_bytes", "gpu_memory": "gpu_memory_peak_bytes"}
    for metric, key in names.items():
        value = record.figure(metric)
        if value is not None:
            summary[key] = value
    v = finding.get("verdict") or {}
    metric = finding["metric"]
    for key, label in (("median_a", f"regression.baseline_{metric}_median"),
                       ("median_b", f"regression.current_{metric}_median"), ("ratio", "regression.ratio"),
                       ("ci_low", "regression.ratio_ci_low"), ("ci_high", "regression.ratio_ci_high"),
                       ("p_value", "regression.p_value"), ("runs_a", "regression.baseline_rounds"),
                       ("runs_b", "regression.current_rounds")):
        if isinstance(v.get(key), (int, float)):
            summary[label] = v[key]
    return summary


# ------------------------------------------------------------ hot spots


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def focus_stacks(collapsed: Mapping[str, int], *, function: str, file: str, pid: int) -> dict[str, int]:
    """Collapsed stacks cut to ``function`` (in ``file``) and what it calls.

    Stacks of this process that never enter the function (pytest itself, the idle time
    before py-spy attached) are dropped; stacks of other processes (what the test
    spawned) are kept whole.
    """
    from perfpilot.profilers import hotspots as hs

    out: dict[str, int] = {}
    same: dict[str, bool] = {}
    for stack, count in collapsed.items():
        stack_pid, frames = hs.split_stack(stack)
        if stack_pid is not None and stack_pid != pid:
            out[stack] = out.get(stack, 0) + count
            continue
        for index, frame in enumerate(frames):
            if frame.name != function and not frame.name.endswith("." + function):
                continue
            if frame.file not in same:
                same[frame.file] = _same_file(frame.file, file)
            if same[frame.file]:
                kept = ";".join(f"{f.name} ({f.file}:{f.line})" if f.line is not None else f"{f.name} ({f.file})"
                                for f in frames[index:])
                out[kept] = out.get(kept, 0) + count
                break
    return out


@dataclass
class Profiled:
    hotspots: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    rounds: int = 0
    samples: int = 0


def profile_rounds(call: Callable[[], None], *, function: str, file: str, seconds: float,
                   project: Path, rate: int = PROFILE_RATE_HZ) -> Profiled:
    """Call ``call`` repeatedly for ``seconds`` (at least once) with py-spy attached to this
    process; hot spots of ``function`` and what it calls. Never raises for py-spy trouble."""
    from perfpilot.profilers import hotspots as hs
    from perfpilot.profilers.stacks import StackRecorder, StacksUnavailable, find_py_spy

    try:
        executable = find_py_spy()
    except StacksUnavailable as exc:
        return Profiled(note=str(exc))
    recorder = StackRecorder(os.getpid(), Settings(rate=rate, subprocesses=True), executable)
    recorder.begin()
    rounds = 0
    error = ""
    try:
        end = time.perf_counter() + seconds
        while True:
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - the real call ran already; a failing repeat only ends profiling
                error = f"round {rounds + 1} raised {type(exc).__name__}: {exc}"
                break
            rounds += 1
            if time.perf_counter() >= end:
                break
    finally:
        recorder.stop()
    focused = focus_stacks(recorder.collapsed, function=function, file=file, pid=os.getpid())
    samples = sum(focused.values())
    if not samples:
        why = recorder.reason or (f"py-spy took no sample inside the test in {rounds} round(s)"
                                  + (f"; {error}" if error else ""))
        return Profiled(note=why, rounds=rounds)
    harness = _harness_roots()
    # perfpilot's own frames (the perfpilot_measure loop) are harness, not the code under test;
    # so are pytest's and pluggy's, which py-spy's --nonblocking reads can also tear into a
    # stack below the test (a CI run saw one in a test that never calls pytest)
    spots = [s for s in hs.aggregate(focused, cwd=str(project), top=TOP_HOTSPOTS + 8)
             if project_relative(str(s.get("file") or ""), project) is not None
             or not any(str(s.get("file") or "").startswith(root) for root in harness)][:TOP_HOTSPOTS]
    note = f"py-spy, {samples} samples at {rate} Hz over {rounds} extra round(s) of the test"
    return Profiled(hotspots=spots, note=note + (f" ({error})" if error else ""), rounds=rounds, samples=samples)


def _harness_roots() -> tuple[str, ...]:
    """Where perfpilot's packages live (``profilers/`` and ``agent/`` sit apart in an
    editable install), and pytest's and pluggy's: the harness around a test."""
    import _pytest
    import pluggy

    import perfpilot
    import perfpilot.agent
    import perfpilot.profilers

    modules = (perfpilot, perfpilot.agent, perfpilot.profilers, _pytest, pluggy)
    return tuple(str(Path(m.__file__).resolve().parent) + os.sep for m in modules if m.__file__)


def named_functions(function: Callable[..., Any], project: Path,
                    limit: int = MAX_NAMED_FUNCTIONS) -> list[Callable[..., Any]]:
    """The project's functions a test names (``work(...)``, ``mod.work(...)``), in order of mention."""
    code = getattr(function, "__code__", None)
    if code is None:
        return []
    scope = getattr(function, "__globals__", {})
    names = list(code.co_names)
    for const in code.co_consts:  # nested functions and lambdas in the test
        if isinstance(const, types.CodeType):
            names += [n for n in const.co_names if n not in names]
    modules = [scope[n] for n in names if isinstance(scope.get(n), types.ModuleType)]
    found: list[Callable[..., Any]] = []
    for name in names:
        candidates = [scope.get(name)] + [getattr(m, name, None) for m in modules]
        for obj in candidates:
            obj = inspect.unwrap(obj) if callable(obj) else obj
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj is not function and obj not in found \
                    and _in_project(obj, project):
                found.append(obj)
                break
        if len(found) >= limit:
            break
    return found


def _in_project(obj: Any, project: Path) -> bool:
    try:
        file = inspect.getsourcefile(obj)
    except TypeError:
        return False
    if not file or "site-packages" in file or "dist-packages" in file:
        return False
    return project_relative(file, project) is not None


def source_spot(obj: Any, *, share: float) -> dict[str, Any] | None:
    """A hot-spot entry that points the context at ``obj``'s source (no samples behind it)."""
    try:
        lines, first = inspect.getsourcelines(obj)
        file = inspect.getsourcefile(obj) or ""
    except (OSError, TypeError):
        return None
    # The context quotes a window around ``line``: aim at the body, not above the def.
    middle = first + min(len(lines) - 1, 10)
    return {"function": getattr(obj, "__qualname__", getattr(obj, "__name__", "?")), "file": file,
            "line": middle, "self_pct": 0.0, "total_pct": share, "samples": 0}


def static_hotspots(function: Callable[..., Any], project: Path) -> list[dict[str, Any]]:
    """The test's own source and that of the project functions it names (no profile)."""
    spots = [spot for obj in [function, *named_functions(function, project)]
             if (spot := source_spot(obj, share=100.0 if obj is function else 0.0)) is not None]
    return spots


def with_test_first(function: Callable[..., Any], spots: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Profiled hot spots, with the test function's own entry first (its source is always shown)."""
    code = getattr(function, "__code__", None)
    if code is None:
        return list(spots)
    mine = [s for s in spots if s.get("function", "").split(".")[-1] == code.co_name
            and _same_file(str(s.get("file")), code.co_filename)]
    rest = [s for s in spots if s not in mine]
    if not mine:
        spot = source_spot(function, share=100.0)
        mine = [spot] if spot else []
    return [*mine, *rest]


# ----------------------------------------------------------------- terminal


def terminal_lines(section: Mapping[str, Any]) -> list[tuple[str, dict[str, bool]]]:
    """(text, markup) lines: each regression asked about and the proposals (never applied)."""
    out: list[tuple[str, dict[str, bool]]] = [("", {})]
    requests = section.get("requests") or []
    if section.get("error"):
        out.append((f"perfpilot suggest ({section.get('backend', '?')}): {section['error']}", {"red": True}))
        return out
    if not requests:
        out.append((f"perfpilot suggest ({section.get('backend', '?')}): {section.get('note', 'nothing asked')}", {}))
        return out
    regressed = section.get("regressed_tests", len(requests))
    more = f" (worst {len(requests)} of {regressed} regressed tests)" if regressed > len(requests) else ""
    out.append((f"proposals from {section.get('backend', '?')} for significant regressions{more} "
                "-- NOT applied; review before use:", {"bold": True}))
    for entry in requests:
        out.append((f"  {entry['nodeid']}" + (f" [{entry['subject']}]" if entry.get("subject") else "")
                    + f": {entry['finding']}", {"bold": True}))
        out.append((f"    hot spots: {entry.get('hotspots_note') or 'none'}", {}))
        out.extend(_hotspot_lines(entry.get("hotspots") or []))
        status = entry.get("status")
        if status == "failed":
            out.append((f"    backend failed: {entry['error']}", {"red": True}))
            continue
        if status == "skipped":
            out.append((f"    {entry['error']}", {"yellow": True}))
            continue
        if status == "invalid":
            out.append((f"    malformed reply, nothing usable: {entry['error']}", {"red": True}))
            continue
        for problem in entry.get("problems", []):
            out.append((f"    (ignored: {problem})", {"yellow": True}))
        for index, proposal in enumerate(entry.get("proposals", []), 1):
            out.extend(_proposal_lines(index, proposal))
    return out


def _hotspot_lines(spots: list[Mapping[str, Any]], top: int = 5) -> list[tuple[str, dict[str, bool]]]:
    """The shared hot-spot table, at 80 columns with the indent: names and lines whole."""
    from perfpilot.profilers import hotspots as hs
    from perfpilot.profilers.renderers.terminal import hotspot_text

    if not spots:
        return []
    rows = [{**s, "short_file": hs.short_path(str(s.get("file") or ""), os.getcwd())} for s in spots[:top]]
    return [(f"    {line}".rstrip(), {}) for line in hotspot_text(rows, width=76).splitlines()]


def _proposal_lines(index: int, proposal: Mapping[str, Any]) -> list[tuple[str, dict[str, bool]]]:
    kind = proposal.get("kind", "?")
    out: list[tuple[str, dict[str, bool]]] = [(f"    {index}. [{kind}] {proposal.get('title') or '(untitled)'}",
                                               {"green": True})]
    rationale = " ".join(str(proposal.get("rationale") or "").split())
    if rationale:
        out.append((f"       why: {rationale}", {}))
    if kind == "patch":
        for line in str(proposal.get("diff") or "").rstrip("\n").splitlines():
            markup = {"green": True} if line.startswith("+") and not line.startswith("+++") else (
                {"red": True} if line.startswith("-") and not line.startswith("---") else {})
            out.append((f"       {line}", markup))
    elif kind == "config":
        out.append((f"       set {proposal.get('key')} = {proposal.get('value')!r} in {proposal.get('file')}", {}))
    elif kind == "env":
        out.append((f"       run with {proposal.get('name')}={proposal.get('value')}", {}))
    elif kind == "knob":
        out.append((f"       knob {proposal.get('knob')} = {proposal.get('value')!r}", {}))
    return out

