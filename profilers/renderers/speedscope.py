"""speedscope's file format (https://www.speedscope.app/file-format-schema.json).

One ``sampled`` profile per sampled process (the first is the busiest), weights in
seconds (samples / rate), frames shared. Open it at https://www.speedscope.app or with
``npx speedscope file.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perfpilot import __version__
from perfpilot.profilers import hotspots as hs
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers.collapsed import stacks_of

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"
output_file_extension = "speedscope.json"


def build(profile: Profile) -> dict[str, Any]:
    collapsed = stacks_of(profile)
    rate = float((profile.stacks or {}).get("rate_hz") or 100)
    frames: list[dict[str, Any]] = []
    index: dict[hs.Frame, int] = {}
    per_process: dict[int | None, tuple[list[list[int]], list[float]]] = {}
    commands: dict[int, str] = {}
    for stack, count in sorted(collapsed.items(), key=lambda kv: (-kv[1], kv[0])):
        for part in stack.split(";"):
            proc = hs.process_of(part)
            if proc is not None:
                commands[proc[0]] = proc[1]
        pid, stack_frames = hs.split_stack(stack)
        ids = []
        for frame in stack_frames:
            i = index.get(frame)
            if i is None:
                i = index[frame] = len(frames)
                entry: dict[str, Any] = {"name": frame.name or "?", "file": frame.file}
                if frame.line is not None:
                    entry["line"] = frame.line
                frames.append(entry)
            ids.append(i)
        samples, weights = per_process.setdefault(pid, ([], []))
        samples.append(ids)
        weights.append(count / rate)
    profiles = []
    command = " ".join(profile.target.get("command") or [])
    for pid, (samples, weights) in sorted(per_process.items(), key=lambda kv: -sum(kv[1][1])):
        name = f"pid {pid}: {commands.get(pid, '')[:100]}" if pid is not None else (command[:100] or "python")
        total = sum(weights)
        profiles.append({"type": "sampled", "name": name, "unit": "seconds", "startValue": 0,
                         "endValue": total, "samples": samples, "weights": weights})
    return {
        "$schema": SCHEMA_URL,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": f"perfpilot: {command or 'pid ' + str(profile.target.get('pid'))}"[:200],
        "activeProfileIndex": 0,
        "exporter": f"perfpilot@{__version__}",
    }


def write(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(json.dumps(build(profile), separators=(",", ":")) + "\n", encoding="utf-8")
