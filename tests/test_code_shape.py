"""Every function in the package is short enough to read on one screen, or says why not.

A function or method over ``MAX_LINES`` lines (from its ``def`` to its last line, decorators
not counted) needs a line in its docstring starting with "Long because" that gives the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("perfpilot", "agent", "plugins", "profilers", "prompts")
MAX_LINES = 80
REASON = "Long because"

# Pending: functions in files other helpers are still editing; the coordinator splits them
# (or gives the reason) after merging, then empties this list.
PENDING: set[str] = set()


def long_functions(source: str, filename: str) -> list[tuple[str, int]]:
    """(qualified name, lines) of each function over MAX_LINES without a "Long because" line."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    doc = ast.get_docstring(child) or ""
                    reasoned = any(line.strip().startswith(REASON) for line in doc.splitlines())
                    if lines > MAX_LINES and not reasoned:
                        found.append((name, lines))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename), "")
    return found


def test_no_long_function_without_a_reason() -> None:
    offenders = []
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for name, lines in long_functions(path.read_text(), rel):
                if f"{rel}:{name}" not in PENDING:
                    offenders.append(f"{rel}:{name} ({lines} lines)")
    assert not offenders, (
        f"functions over {MAX_LINES} lines: split them, or start a docstring line with "
        f"'{REASON}' and the reason: {offenders}"
    )


def test_the_rule_sees_long_functions_nested_ones_and_reasons() -> None:
    def body(indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(MAX_LINES))

    source = (
        f"def long():\n{body('    ')}"
        f"def short():\n    return 1\n"
        f'def reasoned():\n    """Does a thing.\n\n    {REASON} it is a table.\n    """\n{body("    ")}'
        f"class C:\n    def method(self):\n{body('        ')}"
        f"def outer():\n    def inner():\n{body('        ')}"
    )
    found = dict(long_functions(source, "example.py"))
    assert set(found) == {"long", "C.method", "outer", "outer.inner"}
    assert found["long"] == MAX_LINES + 1
