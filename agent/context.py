"""What the proposer is told: bottleneck class, hot spots with their source, telemetry,
knobs, and the history of earlier proposals with their measured outcomes.

Secrets never leave the machine: files that hold them (``.env``, keys, credentials)
are never quoted, and every message is masked by value through a
:class:`~perfpilot.agent.secrets.Masker` (secret environment values, ``.env`` values, URL
credentials, key shapes, high-entropy tokens): source excerpts, history (which carries
failing tests' output), telemetry labels and command lines alike. The rendered prompt is sized to a token budget (about 4 characters a token) by
dropping, in order: old history, source lines around hot spots, then whole hot spots.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from perfpilot import prompts
from perfpilot.agent.backends.openai_backend import KEY_VARIABLES
from perfpilot.agent.knobs import Knob
from perfpilot.agent.outcomes import Outcome
from perfpilot.agent.project_paths import project_relative
from perfpilot.agent.secrets import MASK, Masker, mask_secrets
from perfpilot.profilers.profile import Profile

__all__ = ["MASK", "Context", "classify_bottleneck", "estimate_tokens", "is_secret_file", "mask_secrets",
           "target_kind"]

CHARS_PER_TOKEN = 4
SECRET_FILES = (".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_ed25519*", "*secret*",
                "*credential*", ".netrc", ".pypirc", "*.kdbx", ".npmrc")


def is_secret_file(rel: str) -> bool:
    name = PurePosixPath(rel).name.lower()
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_FILES)


# ------------------------------------------------------------------ bottleneck


def classify_bottleneck(profile: Profile) -> tuple[str, str]:
    """(class, why) from the measured summary and hot spots."""
    s = profile.summary
    wall = float(s.get("wall_s") or profile.duration_s or 0.0)
    cpu = float(s.get("cpu_user_s", 0.0) or 0.0) + float(s.get("cpu_system_s", 0.0) or 0.0)
    util = cpu / wall if wall > 0 else 0.0
    gpu_util = s.get("gpu_utilization_mean_pct")
    if gpu_util is not None:
        if gpu_util >= 80:
            return "GPU-bound", f"GPU busy {gpu_util:.0f}% of the run on average"
        if gpu_util < 50:
            return "GPU under-used", (f"GPU busy only {gpu_util:.0f}% on average: the host side (data loading, "
                                      "Python overhead, synchronisation) is starving it")
    host_memory = float(profile.host.get("memory_bytes") or 0)
    peak = float(s.get("peak_rss_bytes") or 0)
    if host_memory and peak > 0.5 * host_memory:
        return "memory", f"peak RSS {peak / 2**30:.1f} GiB is over half the machine's memory"
    io_bytes = float(s.get("io_read_bytes") or 0) + float(s.get("io_write_bytes") or 0)
    if wall > 0 and io_bytes / wall > 50e6 and util < 0.7:
        return "I/O", f"{io_bytes / wall / 1e6:.0f} MB/s of storage I/O with the CPU only {util:.0%} busy"
    if "cpu_user_s" in s and util < 0.5:
        return "waiting (off-CPU)", f"the CPU was busy only {util:.0%} of the wall time: sleeps, locks, I/O or network"
    python_pct, native_pct = _python_share(profile.hotspots)
    why_cpu = f"CPU busy {util:.0%} of the wall time" if "cpu_user_s" in s else "no CPU telemetry"
    if python_pct + native_pct == 0:
        return "CPU-bound", why_cpu
    if python_pct >= native_pct:
        return "CPU-bound Python", f"{why_cpu}; {python_pct:.0f}% of samples in Python code"
    return "CPU-bound native", f"{why_cpu}; {native_pct:.0f}% of samples in native code (C extensions, libraries)"


def _python_share(hotspots: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    python = native = 0.0
    for spot in hotspots:
        file = str(spot.get("file") or "")
        share = float(spot.get("self_pct") or 0.0)
        if file.endswith((".py", ".pyw")) or file.startswith("<frozen"):
            python += share
        else:
            native += share
    return python, native


def target_kind(profile: Profile, project: Path, run: str | None) -> str:
    """``pytorch`` / ``python`` / ``generic``: which domain prompt applies."""
    files = " ".join(str(s.get("file", "")) for s in profile.hotspots)
    if "torch" in files:
        return "pytorch"
    try:
        sources = [p for p in project.glob("*.py")][:50] + [project / "pyproject.toml"]
        for path in sources:
            if path.is_file() and re.search(r"^\s*(import|from)\s+torch\b|\"torch[=<>~ \"]", 
                                            path.read_text(encoding="utf-8", errors="replace"), re.M):
                return "pytorch"
    except OSError:
        pass
    if ".py" in files or (run or "").split(" ", 1)[0].rsplit("/", 1)[-1].startswith("python") or ".py" in (run or ""):
        return "python"
    return "generic"


# ---------------------------------------------------------------- the context


@dataclass
class Context:
    """Everything a proposer sees; rendered into chat messages by :meth:`messages`."""

    project: Path  # the workspace copy the hot spots point into
    objective: str
    guards: dict[str, Any]
    run: str
    test: str
    profile: Profile
    knobs: dict[str, Knob]
    knob_values: dict[str, Any]
    env: dict[str, str]
    history: list[Outcome]
    files: list[str]
    kind: str = "python"
    bottleneck: tuple[str, str] = ("unknown", "")
    budget_tokens: int = 12000
    extra_paths: list[str] = field(default_factory=list)  # other roots the profile's files may live in
    # Values that must never leave (a daemon's bearer token, a key given on a flag);
    # API keys from the environment are always added.
    known_secrets: tuple[str, ...] = ()
    # Shared with the optimiser's report so it can say how many values were masked; built
    # from the environment and the project's .env files when none is given.
    masker: Masker | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, *, project: Path, profile: Profile, objective: str, guards: Mapping[str, Any], run: str,
              test: str, knobs: Mapping[str, Knob], knob_values: Mapping[str, Any], env: Mapping[str, str],
              history: Sequence[Outcome], files: Sequence[str], budget_tokens: int,
              extra_paths: Sequence[str] = (), masker: Masker | None = None) -> "Context":
        return cls(project=project, objective=objective, guards=dict(guards), run=run, test=test, profile=profile,
                   knobs=dict(knobs), knob_values=dict(knob_values), env=dict(env), history=list(history),
                   files=sorted(files), kind=target_kind(profile, project, run),
                   bottleneck=classify_bottleneck(profile), budget_tokens=budget_tokens,
                   extra_paths=list(extra_paths), masker=masker or Masker.for_project(project))

    # ------------------------------------------------------------ sections

    def relative(self, file: str) -> str | None:
        """A profile's file path as a project-relative path, or None if outside it."""
        return project_relative(file, self.project, self.extra_paths)

    def summary_text(self) -> str:
        s = self.profile.summary
        rows = []
        for key, value in s.items():
            if key == "energy" and isinstance(value, dict):
                for domain, entry in value.items():
                    rows.append(f"- energy.{domain}: {entry.get('joules', 0):.3f} J (source: {entry.get('source')})")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(f"- {key}: {value:.6g}")
        return "\n".join(rows[:40]) or "(no telemetry)"

    def hotspots_text(self, top: int, window: int) -> str:
        blocks = []
        for spot in self.profile.hotspots:
            if len(blocks) >= top:
                break
            rel = self.relative(str(spot.get("file", "")))
            head = (f"### {spot.get('function')} — {spot.get('short_file') or spot.get('file')}:{spot.get('line')} "
                    f"(self {spot.get('self_pct', 0):.1f}%, total {spot.get('total_pct', 0):.1f}%)")
            if rel is None or is_secret_file(rel):
                # Outside the project (stdlib, site-packages): name it, do not quote it.
                blocks.append(head + "\n(outside the project; not editable)")
                continue
            source = self._source(rel, spot.get("line"), window)
            blocks.append(head + f"\nFile `{rel}`:\n```python\n{source}\n```" if source else head)
        return "\n\n".join(blocks) or "(no hot spots: stacks were not sampled)"

    def _source(self, rel: str, line: Any, window: int) -> str:
        try:
            lines = (self.project / rel).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        if not isinstance(line, int) or window <= 0:
            return ""
        lo, hi = max(1, line - window), min(len(lines), line + window)
        width = len(str(hi))
        text = "\n".join(f"{n:>{width}} | {lines[n - 1]}" for n in range(lo, hi + 1))
        return self.secrets().mask_text(text)

    def knobs_text(self) -> str:
        if not self.knobs:
            return "(none declared)"
        rows = []
        for name, knob in self.knobs.items():
            current = self.knob_values.get(name, knob.default)
            rows.append(f"- {knob.describe()}; current: {current!r}")
        if self.env:
            rows.append("Environment already set by accepted changes: "
                        + ", ".join(f"{k}={v}" for k, v in self.env.items()))
        return "\n".join(rows)

    def history_text(self, last: int) -> str:
        if not self.history:
            return "(none yet)"
        shown = self.history[-last:] if last > 0 else []
        rows = [f"{o.index}. {o.summary_line(self.objective)}" + (f"\n   why: {_one_line(o.detail, 400)}"
                                                                    if o.detail and not o.improved else "")
                for o in shown]
        dropped = len(self.history) - len(shown)
        if dropped:
            rows.insert(0, f"({dropped} earlier proposals not shown)")
        return self.secrets().mask_text("\n".join(rows))

    def files_text(self, limit: int = 200) -> str:
        shown = [f for f in self.files if not is_secret_file(f)][:limit]
        more = len(self.files) - len(shown)
        return ", ".join(f"`{f}`" for f in shown) + (f" (and {more} more)" if more > 0 else "")

    # ------------------------------------------------------------ rendering

    def render(self, *, top: int = 5, window: int = 12, last: int = 12) -> str:
        guards = ""
        if self.guards:
            guards = ", subject to guards " + ", ".join(f"{k} ≤ {v}" for k, v in self.guards.items())
        return prompts.render(
            "optimize", objective=self.objective, guards=guards, run=self.run, test=self.test or "(none)",
            domain=prompts.domain_prompt(self.kind).strip(), bottleneck=self.bottleneck[0],
            bottleneck_why=self.bottleneck[1], summary=self.summary_text(),
            hotspots=self.hotspots_text(top, window), knobs=self.knobs_text(), files=self.files_text(),
            history=self.history_text(last),
        )

    def messages(self) -> list[dict[str, str]]:
        """System + user messages within the token budget (shrinking what matters least first)."""
        system = prompts.load("system").strip()
        budget_chars = max(1000, self.budget_tokens * CHARS_PER_TOKEN - len(system))
        top, window, last = 5, 12, 12
        text = self.render(top=top, window=window, last=last)
        while len(text) > budget_chars:
            if last > 3:
                last -= 3
            elif window > 4:
                window -= 4
            elif top > 1:
                top -= 1
            elif last > 0:
                last -= 1
            elif window > 0:
                window = 0
            else:
                text = text[: budget_chars - 40] + "\n…(truncated to fit the token budget)"
                break
            text = self.render(top=top, window=window, last=last)
        return [{"role": "system", "content": system}, {"role": "user", "content": self._mask(text)}]

    def secrets(self) -> Masker:
        if self.masker is None:
            self.masker = Masker.for_project(self.project)
        self.masker.add([*self.known_secrets, *(os.environ.get(name, "") for name in KEY_VARIABLES)])
        return self.masker

    def _mask(self, text: str) -> str:
        """The whole message masked once more before it leaves: a test id, a command
        line or a figure's label can carry a secret that no quoted section did."""
        return self.secrets().mask_text(text)


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(len(m.get("content", "")) for m in messages) // CHARS_PER_TOKEN + 1


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else "…" + flat[-limit:]
