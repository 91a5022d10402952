"""What the pytest plugin measured, as records, a JSON document and terminal lines.

The JSON document (``--perfpilot-json``; also what the HTML report is drawn from)::

    {"schema": "perfpilot.pytest-report", "version": 1,
     "meta": {machine_id, python, commit, dirty, date, rounds, xdist_workers, measuring: {...}},
     "baseline": {"path", "meta", "warnings"} | null,
     "saved_baseline": path | null,
     "tests": [TestRecord.to_dict(), ...],          # in run order
     "findings": [Finding.to_dict(), ...],           # comparisons with the baseline
     "summary": {"tests", "measured", "budget_failures", "regressions", "noise", "improved"},
     "suggestions": {...}}                           # only with --perfpilot-suggest

``suggestions`` (see :mod:`perfpilot.pytest_plugin.suggest`)::

    {"backend": "llm via openai (gpt-4.1)", "applied": false, "regressed_tests": int, "note"?: str,
     "requests": [{"nodeid", "subject", "metric", "ratio", "ci_low", "ci_high", "p_value", "finding",
                   "hotspots_from", "hotspots_note", "hotspots": [...], "request": [messages sent],
                   "request_tokens", "status": "ok" | "invalid" | "failed" | "skipped", "error",
                   "proposals": [{"kind", "title", "rationale", "diff"...}], "problems", "seconds"}]}

Units: seconds, bytes, joules. ``rounds[metric]`` is the list of every round's figure.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

from perfpilot.pytest_plugin.budgets import NEAR_LIMIT, format_quantity

SCHEMA = "perfpilot.pytest-report"
VERSION = 1
SIZE_METRICS = {"peak_rss", "gpu_memory", "io", "io_read", "io_write"}


@dataclass
class TestRecord:
    nodeid: str
    rounds: dict[str, list[float]] = field(default_factory=dict)
    energy_source: str | None = None
    energy_note: str = ""
    peak_rss_exact: bool = True
    budget: dict[str, str] = field(default_factory=dict)  # metric -> as written
    budget_results: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    measure: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # why perfpilot failed the test
    notes: list[str] = field(default_factory=list)
    outcome: str = ""
    worker: str = ""
    # --perfpilot-suggest only, for regressed tests: what the proposer is shown
    hotspots: list[dict[str, Any]] = field(default_factory=list)
    hotspots_from: str = ""  # "py-spy" | "source" | ""
    hotspots_note: str = ""

    __test__ = False  # not a pytest test class, despite the name

    def add(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.rounds.setdefault(name, []).append(float(value))

    def figure(self, metric: str) -> float | None:
        """The test's figure for a metric: max over rounds for sizes (a peak), else the median."""
        values = self.rounds.get(metric)
        if not values:
            return None
        return max(values) if metric in SIZE_METRICS else statistics.median(values)

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies every list, which cost more
        # than all the per-test measuring put together on a suite of thousands of tests.
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if not (self.hotspots or self.hotspots_note):  # only regressed tests under --perfpilot-suggest have them
            del data["hotspots"], data["hotspots_from"], data["hotspots_note"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TestRecord":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def baseline_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"rounds": self.rounds, "energy_source": self.energy_source}
        if self.measure:
            entry["measure"] = {name: {"wall": d["wall"], "cpu": d["cpu"], "iterations": d["iterations"],
                                       **({"cpu_wait": d["cpu_wait"]} if d.get("cpu_wait") else {})}
                                for name, d in self.measure.items()}
        return entry


def check_budget(record: TestRecord, limits: dict[str, float]) -> None:
    """Fill ``budget_results`` and ``failures`` from the record's rounds."""
    for metric, limit in limits.items():
        measured = record.figure(metric)
        result: dict[str, Any] = {"metric": metric, "limit": limit, "spec": record.budget.get(metric, ""),
                                  "measured": measured}
        if measured is None:
            result["status"] = "unmeasured"
            record.notes.append(f"{metric} budget not checked: {metric} is not measured here")
        else:
            result["share"] = measured / limit
            estimate = metric == "energy" and record.energy_source == "estimate"
            how = f"max of {len(record.rounds[metric])} rounds" if metric in SIZE_METRICS else (
                f"median of {len(record.rounds[metric])} rounds")
            if measured > limit and estimate:
                result["status"] = "over-estimate"
                record.notes.append(
                    f"energy {format_quantity(metric, measured)} is over its {record.budget.get(metric)} budget, "
                    f"but only as an estimate ({record.energy_note}); not enforced")
            elif measured > limit:
                result["status"] = "over"
                record.failures.append(
                    f"perf_budget exceeded: {metric} {format_quantity(metric, measured)} > budget "
                    f"{format_quantity(metric, limit)} ({record.budget.get(metric)!r}; {how})")
            elif measured >= NEAR_LIMIT * limit:
                result["status"] = "near"
            else:
                result["status"] = "ok"
        record.budget_results.append(result)


def build_document(*, meta: dict[str, Any], records: Iterable[TestRecord], findings: list[dict[str, Any]],
                   baseline: dict[str, Any] | None, saved: str | None) -> dict[str, Any]:
    records = list(records)
    kinds = [f["kind"] for f in findings]
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "meta": meta,
        "baseline": baseline,
        "saved_baseline": saved,
        "tests": [r.to_dict() for r in records],
        "findings": findings,
        "summary": {
            "tests": len(records),
            "measured": sum(1 for r in records if r.rounds),
            "budget_failures": sum(1 for r in records for b in r.budget_results if b.get("status") == "over"),
            "regressions": kinds.count("regression"),
            "noise": kinds.count("noise"),
            "improved": kinds.count("improved"),
        },
    }


# ------------------------------------------------------------------ terminal


def _line(record: TestRecord) -> str:
    parts = []
    for metric in ("wall", "cpu", "cpu_wait", "peak_rss"):
        value = record.figure(metric)
        if value is not None:
            label = {"wall": "", "cpu": "cpu ", "cpu_wait": "wait ", "peak_rss": "rss +"}[metric]
            unit = "wall" if metric == "cpu_wait" else metric  # seconds, not a budget metric
            parts.append(f"{label}{format_quantity(unit, value):>9}")
    energy = record.figure("energy")
    if energy is not None:
        parts.append(f"{format_quantity('energy', energy)}{'~' if record.energy_source == 'estimate' else ''}")
    return "  ".join(parts)


def terminal_lines(doc: dict[str, Any], *, slowest: int) -> list[tuple[str, dict[str, bool]]]:
    """(text, markup) lines for the terminal summary: slowest tests, budgets, regressions."""
    out: list[tuple[str, dict[str, bool]]] = []
    records = [TestRecord.from_dict(t) for t in doc["tests"]]
    meta = doc["meta"]
    measured = [r for r in records if r.rounds.get("wall")]
    measuring = meta.get("measuring", {})
    out.append((f"measured {sum(1 for r in records if r.rounds)} tests in-process, {meta.get('rounds', 1)} round(s) each "
                f"(peak rss: {measuring.get('peak_rss', '?')}; energy: {measuring.get('energy', '?')})", {}))
    for note in meta.get("notes", []):
        out.append((f"note: {note}", {"yellow": True}))
    if slowest > 0 and measured:
        out.append(("", {}))
        out.append((f"slowest {min(slowest, len(measured))} tests (median wall, cpu incl. children, "
                     "run-queue wait for a CPU, peak rss growth"
                     f", energy; ~ = estimate):", {"bold": True}))
        for record in sorted(measured, key=lambda r: r.figure("wall") or 0.0, reverse=True)[:slowest]:
            out.append((f"  {_line(record)}  {record.nodeid}", {}))
    if any(r.rounds.get("instructions") for r in records):
        from perfpilot.pytest_plugin.instructions import summary_lines

        out.extend(summary_lines(records, slowest))
    budgeted = [(r, b) for r in records for b in r.budget_results if b.get("status") in {"over", "near", "over-estimate"}]
    if budgeted:
        out.append(("", {}))
        out.append(("budgets over or near their limit:", {"bold": True}))
        for record, b in sorted(budgeted, key=lambda rb: -(rb[1].get("share") or 0)):
            status = {"over": "OVER", "near": "near", "over-estimate": "over (estimate, not enforced)"}[b["status"]]
            text = (f"  {status:>5} {b['metric']} {format_quantity(b['metric'], b['measured'])} of "
                    f"{format_quantity(b['metric'], b['limit'])} ({b['share']:.0%})  {record.nodeid}")
            out.append((text, {"red": b["status"] == "over", "yellow": b["status"] != "over"}))
    unmeasured = sorted({f"{b['metric']}" for r in records for b in r.budget_results if b.get("status") == "unmeasured"})
    if unmeasured:
        out.append((f"budgets not checked (not measurable here): {', '.join(unmeasured)}", {"yellow": True}))
    baseline = doc.get("baseline")
    if baseline:
        out.extend(_comparison_lines(doc, baseline))
    if doc.get("saved_baseline"):
        out.append(("", {}))
        out.append((f"baseline saved: {doc['saved_baseline']}", {"green": True}))
    return out


def _comparison_lines(doc: dict[str, Any], baseline: dict[str, Any]) -> list[tuple[str, dict[str, bool]]]:
    from perfpilot.pytest_plugin.compare import Finding  # small module, only when comparing

    out: list[tuple[str, dict[str, bool]]] = [("", {})]
    meta = baseline.get("meta") or {}
    commit = (meta.get("commit") or "no git")[:10]
    out.append((f"compared with baseline {meta.get('date', '?')} commit {commit} py{meta.get('python', '?')} "
                f"({baseline.get('path')})", {"bold": True}))
    for warning in baseline.get("warnings", []):
        out.append((f"  warning: {warning}", {"yellow": True}))
    findings = [Finding(**{k: f[k] for k in ("nodeid", "metric", "kind", "verdict", "reason", "subject")})
                for f in doc["findings"]]
    out.extend(_drift_lines(doc["meta"].get("drift")))
    groups = [("regression", "significant regressions (these tests fail):", {"red": True}),
              ("noise", "worse, but not failed (not significant, below the noise floor or the suite's spread, a busier "
                         "machine, or a burst that a re-measurement did not see):",
               {"yellow": True}),
              ("improved", "significant improvements:", {"green": True})]
    for kind, title, markup in groups:
        chosen = [f for f in findings if f.kind == kind]
        if not chosen:
            continue
        out.append((f"  {title}", markup))
        for finding in sorted(chosen, key=lambda f: -(f.verdict.get("ratio") or 0))[:20]:
            out.append((f"    {finding.describe()}  {finding.where}", markup))
        if len(chosen) > 20:
            out.append((f"    ... and {len(chosen) - 20} more (see --perfpilot-json)", {}))
    counts = {k: sum(1 for f in findings if f.kind == k) for k in ("regression", "noise", "improved", "unchanged",
                                                                     "insufficient")}
    missing = baseline.get("missing", 0)
    out.append((f"  {counts['regression']} regressed, {counts['noise']} within noise, {counts['improved']} improved, "
                f"{counts['unchanged']} unchanged, {counts['insufficient']} with too few rounds"
                + (f", {missing} not in the baseline" if missing else ""), {}))
    busy = [f for f in findings if f.kind == "noise" and "busy_machine" in f.verdict]
    if busy:
        waited = sum(f.verdict["busy_machine"]["cpu_wait_added_s"] for f in busy)
        out.append((f"  {len(busy)} wall regression(s) not failed: noise: the machine was busier (waited "
                    f"{waited * 1e3:.1f} ms more for a CPU in all, per-test medians); wall less that wait did not regress",
                    {"yellow": True}))
    return out


def _drift_lines(section: dict[str, Any] | None) -> list[tuple[str, dict[str, bool]]]:
    """The session factor that was divided out, and what re-measuring the suspects found."""
    if not section or not section.get("applied"):
        return []
    out = []
    for metric in section["applied"]:
        d = section["metrics"][metric]
        out.append((f"  {metric}: this session ran x{d['factor']:.2f} the baseline's time (median of {d['tests']} "
                    f"tests), divided out; a test fails above x{d['limit']:.2f} of that (threshold "
                    f"+{d['threshold']:.0%}, suite spread {d['spread']:.1%}) and "
                    f"{format_quantity(metric, d['floor'])} over it", {}))
    again = section.get("remeasured") or []
    if again:
        tests = {r["nodeid"] for r in again}
        kept = {r["nodeid"] for r in again if r["regressed"]}
        out.append((f"  {len(tests)} suspect(s) re-measured at the end of the session: {len(kept)} still regressed, "
                    f"{len(tests - kept)} were a burst (at most {section.get('max_remeasure')} are re-measured)", {}))
    return out
