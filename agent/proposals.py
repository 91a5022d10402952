"""Proposals: the changes a proposer suggests, and tolerant parsing of untrusted replies.

An LLM reply is untrusted input. :func:`parse_reply` accepts the JSON shape of
DESIGN.md wrapped in prose or code fences, validates every proposal against the schema
below, and never raises on bad input: what it cannot use comes back as problems, which
the loop records as a rejected ("malformed") proposal and tells the proposer about.

Schema (one object, or a bare list of proposals)::

    {"proposals": [
      {"kind": "patch",  "title": str, "rationale": str, "diff": str},
      {"kind": "config", "title": str, "rationale": str, "file": str, "key": str, "value": scalar},
      {"kind": "env",    "title": str, "rationale": str, "name": str, "value": str},
      {"kind": "knob",   "title": str, "rationale": str, "knob": str, "value": scalar}
    ]}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("patch", "config", "env", "knob")
REQUIRED: dict[str, tuple[str, ...]] = {
    "patch": ("diff",),
    "config": ("file", "key", "value"),
    "env": ("name", "value"),
    "knob": ("knob", "value"),
}
MAX_TITLE = 200
MAX_RATIONALE = 4000
MAX_DIFF = 200_000
MAX_PROPOSALS_PER_REPLY = 8
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables that would let a proposal change what is measured or how, not the program.
FORBIDDEN_ENV = {"PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                 "PERFPILOT_METRICS_FILE", "HOME"}
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n(.*?)```", re.DOTALL)


@dataclass
class Proposal:
    """One candidate change. ``changes`` holds the parts of a combined candidate (knob search)."""

    kind: str
    title: str = ""
    rationale: str = ""
    diff: str | None = None
    file: str | None = None
    key: str | None = None
    name: str | None = None
    knob: str | None = None
    value: Any = None
    source: str = ""  # which proposer made it
    # Verify but never adopt: the knob search screens each value against the baseline.
    trial: bool = False
    changes: list["Proposal"] = field(default_factory=list)
    # kind "invalid": a reply nothing could be used from (recorded as "malformed reply")
    problems: list[str] = field(default_factory=list)
    raw: str = ""

    def describe(self) -> str:
        if self.title:
            return self.title
        if self.kind == "env":
            return f"env {self.name}={self.value}"
        if self.kind == "knob":
            return f"knob {self.knob}={self.value}"
        if self.kind == "config":
            return f"{self.file}: {self.key} = {self.value!r}"
        if self.kind == "combined":
            return " + ".join(c.describe() for c in self.changes)
        if self.kind == "invalid":
            return "malformed reply"
        return self.kind

    def parts(self) -> list["Proposal"]:
        """The elementary changes (itself, or the parts of a combined candidate)."""
        return list(self.changes) if self.kind == "combined" else [self]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["changes"] = [c.to_dict() for c in self.changes]
        data.pop("raw", None)
        return {k: v for k, v in data.items() if v not in (None, "", [], False) or k == "kind"}


@dataclass
class ParsedReply:
    proposals: list[Proposal]
    problems: list[str]

    @property
    def malformed(self) -> bool:
        return not self.proposals and bool(self.problems)


def _candidates(text: str) -> list[str]:
    """Pieces of ``text`` that may be the JSON document, most likely first."""
    found = [m.group(1).strip() for m in _FENCE.finditer(text)]
    if not found and "```" in text:
        # An opening fence that was never closed (a reply cut off): what follows it.
        found.append(text.split("```", 1)[1].partition("\n")[2].strip())
    stripped = text.strip()
    found.append(stripped)
    # The outermost {...} or [...] span, for prose before/after an unfenced object.
    for open_ch, close_ch in (("{", "}"), ("[", "]")):
        start, end = stripped.find(open_ch), stripped.rfind(close_ch)
        if 0 <= start < end:
            found.append(stripped[start:end + 1])
    return found


def _without_trailing_commas(text: str) -> str:
    """``text`` minus commas that only precede a closing ``}`` or ``]`` (outside strings):
    the JSON slip models make most, which json.loads refuses."""
    out: list[str] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            escaped = ch == "\\" and not escaped
            if ch == '"' and not escaped:
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == ",":
            rest = text[i + 1:].lstrip()
            if rest[:1] in ("}", "]"):
                continue
        out.append(ch)
    return "".join(out)


def _load_json(text: str) -> tuple[Any, str | None]:
    error = None
    for candidate in _candidates(text):
        try:
            return json.loads(candidate), None
        except json.JSONDecodeError as exc:
            if candidate[:1] in "{[":
                try:
                    return json.loads(_without_trailing_commas(candidate)), None
                except json.JSONDecodeError:
                    pass
            # Report the first piece that looked like JSON, not the prose around it.
            if error is None and candidate[:1] in "{[":
                error = f"reply is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    return None, error or "no JSON object found in the reply"


def _without_surrogates(value: Any) -> Any:
    """Lone surrogates (which no UTF-8 file, pipe or terminal takes) as U+FFFD, everywhere in ``value``."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def validate(item: Any, index: int = 0) -> tuple[Proposal | None, str | None]:
    """One proposal object -> (Proposal, None) or (None, why it was rejected)."""
    where = f"proposal {index + 1}"
    if not isinstance(item, dict):
        return None, f"{where}: expected an object, got {type(item).__name__}"
    kind = item.get("kind")
    if kind not in KINDS:
        return None, f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}"
    missing = [k for k in REQUIRED[kind] if k not in item]
    if missing:
        return None, f"{where} ({kind}): missing {', '.join(missing)}"
    title = item.get("title", "")
    rationale = item.get("rationale", "")
    if not isinstance(title, str) or not isinstance(rationale, str):
        return None, f"{where}: title and rationale must be strings"
    title = "".join(ch if ch.isprintable() else " " for ch in title)  # it becomes a commit message and a line
    proposal = Proposal(kind=kind, title=title.strip()[:MAX_TITLE], rationale=rationale.strip()[:MAX_RATIONALE])
    if kind == "patch":
        diff = item["diff"]
        if not isinstance(diff, str) or not diff.strip():
            return None, f"{where} (patch): diff must be a non-empty string"
        if len(diff) > MAX_DIFF:
            return None, f"{where} (patch): diff is {len(diff)} characters, more than {MAX_DIFF}"
        # Hunks, or a git diff that needs none (rename, deletion of an empty file, binary).
        if "@@" not in diff and not re.search(r"^(GIT binary patch|rename from |deleted file mode |new file mode )",
                                               diff, re.MULTILINE):
            return None, f"{where} (patch): diff is not a unified diff (no @@ hunk header)"
        proposal.diff = diff if diff.endswith("\n") else diff + "\n"
    elif kind == "config":
        if not isinstance(item["file"], str) or not item["file"].strip():
            return None, f"{where} (config): file must be a non-empty string"
        if not isinstance(item["key"], str) or not item["key"].strip():
            return None, f"{where} (config): key must be a non-empty dotted string"
        if not _is_scalar(item["value"]) and not isinstance(item["value"], list):
            return None, f"{where} (config): value must be a string, number, boolean or list"
        proposal.file, proposal.key, proposal.value = item["file"].strip(), item["key"].strip(), item["value"]
    elif kind == "env":
        name, value = item["name"], item["value"]
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            return None, f"{where} (env): {name!r} is not a valid environment variable name"
        if name.upper() in FORBIDDEN_ENV or name.upper().startswith("PERFPILOT_"):
            return None, f"{where} (env): changing {name} is not allowed (it changes how the run is measured)"
        if not _is_scalar(value) or value is None:
            return None, f"{where} (env): value must be a string"
        proposal.name, proposal.value = name, str(value)
    elif kind == "knob":
        if not isinstance(item["knob"], str) or not _is_scalar(item["value"]):
            return None, f"{where} (knob): knob must be a name and value a string or number"
        proposal.knob, proposal.value = item["knob"], item["value"]
    return proposal, None


def invalid(problems: list[str], raw: str, source: str = "llm") -> Proposal:
    """A placeholder for an unusable reply, so the loop records it and tells the proposer."""
    return Proposal(kind="invalid", source=source, problems=list(problems), raw=raw[:4000])


def parse_reply(text: str, *, source: str = "llm") -> ParsedReply:
    """Parse an untrusted reply; never raises for bad content."""
    if not isinstance(text, str) or not text.strip():
        return ParsedReply([], ["the reply was empty"])
    # A lone surrogate cannot be written as UTF-8 (to git, a report, a terminal): U+FFFD instead.
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    data, error = _load_json(text)
    if error is not None:
        return ParsedReply([], [error])
    data = _without_surrogates(data)  # JSON's "\ud800" escape makes one too
    if isinstance(data, dict) and "proposals" in data:
        items = data["proposals"]
    elif isinstance(data, dict) and "kind" in data:
        items = [data]  # a single proposal without the wrapper
    elif isinstance(data, list):
        items = data
    else:
        return ParsedReply([], ['expected {"proposals": [...]}'])
    if not isinstance(items, list):
        return ParsedReply([], ['"proposals" must be a list'])
    problems: list[str] = []
    if len(items) > MAX_PROPOSALS_PER_REPLY:
        problems.append(f"only the first {MAX_PROPOSALS_PER_REPLY} of {len(items)} proposals were considered")
        items = items[:MAX_PROPOSALS_PER_REPLY]
    proposals: list[Proposal] = []
    for index, item in enumerate(items):
        proposal, problem = validate(item, index)
        if proposal is None:
            problems.append(problem or f"proposal {index + 1}: invalid")
            continue
        proposal.source = source
        proposals.append(proposal)
    if not items:
        problems.append("the reply contained no proposals")
    return ParsedReply(proposals, problems)
