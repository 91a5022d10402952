"""Prompt templates sent to LLMs (plain Markdown files) and their loader.

Templates are ``string.Template`` files (``$name`` placeholders), so code and JSON in
them need no escaping. Domain prompts are chosen by target kind: ``python.md`` for a
Python program, ``pytorch.md`` for a PyTorch training script, and so on; a kind without
its own file gets ``generic.md``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any

PACKAGE = "perfpilot.prompts"


@lru_cache(maxsize=None)
def load(name: str) -> str:
    """The text of ``prompts/<name>.md``; FileNotFoundError when there is none."""
    path = resources.files(PACKAGE).joinpath(f"{name}.md")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template named {name!r}")
    return path.read_text(encoding="utf-8")


def available() -> list[str]:
    return sorted(p.name[:-3] for p in resources.files(PACKAGE).iterdir() if p.name.endswith(".md"))


def render(name: str, **values: Any) -> str:
    """``load(name)`` with ``$placeholders`` filled; unknown ones are left as written."""
    return Template(load(name)).safe_substitute({k: str(v) for k, v in values.items()})


def domain_prompt(kind: str) -> str:
    """Domain knowledge for a target kind (``pytorch``, ``python``...), else the generic one."""
    for name in (kind, "generic"):
        try:
            return load(name)
        except FileNotFoundError:
            continue
    return ""
