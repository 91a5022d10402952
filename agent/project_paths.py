"""Where a file named by a profile lies relative to the project.

Hot spots name files as the interpreter saw them: absolute, relative to the target's working directory, or
pseudo-files (``<string>``, ``<frozen ...>``). Only files inside the project are quoted to a proposer or
offered for patching; the optimiser's context, pytest's ``--perfpilot-suggest`` and the daemon's
``--propose`` all decide that here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def project_relative(file: str, project: Path, extra_roots: Iterable[str | Path] = ()) -> str | None:
    """``file`` as a POSIX path relative to ``project`` (or to the first of ``extra_roots`` holding it), or None
    when it lies outside them or is a pseudo-file. A relative ``file`` counts only when it names a file in the
    project (resolving it against perfpilot's own working directory would be wrong: the daemon's is not the
    target's)."""
    if not file or file.startswith("<"):
        return None
    path = Path(file)
    if not path.is_absolute():
        return path.as_posix() if (project / path).is_file() else None
    for root in (project, *map(Path, extra_roots)):
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except (ValueError, OSError):
            continue
    return None
