"""Collapsed stacks (``frame;frame;frame count`` per line): the input of Brendan Gregg's
flamegraph.pl, inferno and speedscope's importer."""

from __future__ import annotations

from pathlib import Path

from perfpilot.errors import ProfileFormatError
from perfpilot.profilers.profile import Profile

output_file_extension = "txt"


class NoStacksError(ProfileFormatError):
    """The Profile has no sampled stacks to export."""


def stacks_of(profile: Profile) -> dict[str, int]:
    collapsed = (profile.stacks or {}).get("collapsed") or {}
    if not collapsed:
        why = profile.annotations.get("stacks_note") or "it was recorded with --no-stacks"
        raise NoStacksError(f"this profile has no Python stacks to export: {why}",
                            hint="record again with stacks on (the default) for a Python target")
    return {str(k): int(v) for k, v in collapsed.items()}


def render(profile: Profile) -> str:
    items = sorted(stacks_of(profile).items(), key=lambda kv: (-kv[1], kv[0]))
    return "".join(f"{stack} {count}\n" for stack, count in items)


def write(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(render(profile), encoding="utf-8")
