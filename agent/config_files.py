"""Edit one key of a TOML, JSON, YAML or INI file, by dotted path.

TOML keeps its comments and layout (tomlkit). JSON is rewritten with the file's own
indent. In YAML and INI an existing key with a one-line value is edited on its line,
keeping comments and layout; only when that is not possible (a new key, a multi-line
value) is the file rewritten by its parser, which drops comments. Either way the
result is checked by parsing it back.

For INI files the first component of the key is the section: ``server.workers``.
"""

from __future__ import annotations

import configparser
import io
import json
import re
from pathlib import Path
from typing import Any

FORMATS = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".ini": "ini", ".cfg": "ini"}


class ConfigEditError(ValueError):
    """The key could not be set; the message says why (recorded, never fatal)."""


def file_format(path: str | Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigEditError(
            f"{Path(path).name}: cannot edit by key (supported: {', '.join(sorted(FORMATS))})")
    return fmt


def _split_key(key: str) -> list[str]:
    parts = [p for p in key.split(".")]
    if not parts or any(not p.strip() for p in parts):
        raise ConfigEditError(f"invalid key {key!r}: use a dotted path like data.num_workers")
    return parts


def _descend(doc: Any, parts: list[str], key: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not hasattr(node, "get") or part not in node:
            raise ConfigEditError(f"key {key!r}: there is no {part!r} to put it in")
        node = node[part]
    if not hasattr(node, "__setitem__") or isinstance(node, (str, bytes)):
        raise ConfigEditError(f"key {key!r}: its parent is not a table")
    return node


def get_value(path: str | Path, key: str) -> Any:
    """The current value of ``key`` in the file (None when absent)."""
    path = Path(path)
    fmt = file_format(path)
    text = path.read_text(encoding="utf-8")
    parts = _split_key(key)
    if fmt == "ini":
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(text)
        section, option = parts[0], ".".join(parts[1:])
        return parser.get(section, option, fallback=None) if option else None
    doc = _parse(fmt, text, path)
    node: Any = doc
    for part in parts:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif hasattr(node, "get") and part in node:
            node = node[part]
        else:
            return None
    return node.unwrap() if hasattr(node, "unwrap") else node


def _parse(fmt: str, text: str, path: Path) -> Any:
    try:
        if fmt == "toml":
            import tomlkit

            return tomlkit.parse(text)
        if fmt == "json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - any parser's error becomes one message
        raise ConfigEditError(f"{path.name}: cannot parse as {fmt}: {exc}".splitlines()[0]) from None


def _json_indent(text: str) -> int | None:
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped and stripped != line:
            return len(line) - len(stripped)
    return None if "\n" not in text.strip() else 2


def set_value(path: str | Path, key: str, value: Any) -> None:
    """Set ``key`` to ``value`` in place; parents must exist, the leaf may be new."""
    path = Path(path)
    fmt = file_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigEditError(f"{path.name}: cannot read: {exc.strerror}") from None
    parts = _split_key(key)
    if fmt == "ini":
        if len(parts) < 2:
            raise ConfigEditError(f"key {key!r}: INI keys are section.option")
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # keep the option's case as written
        parser.read_string(text)
        if not parser.has_section(parts[0]):
            raise ConfigEditError(f"key {key!r}: there is no section [{parts[0]}]")
        rendered = str(value).lower() if isinstance(value, bool) else str(value)
        parser.set(parts[0], ".".join(parts[1:]), rendered)
        edited = _ini_line_edit(text, parts[0], ".".join(parts[1:]), rendered)
        if edited is not None and _ini_dict(edited) == {k: dict(v) for k, v in parser.items()}:
            path.write_text(edited, encoding="utf-8")
            return
        out = io.StringIO()
        parser.write(out)
        path.write_text(out.getvalue(), encoding="utf-8")
        return
    doc = _parse(fmt, text, path)
    parent = _descend(doc, parts, key)
    leaf = parts[-1]
    if isinstance(parent, list):
        if not leaf.isdigit() or int(leaf) >= len(parent):
            raise ConfigEditError(f"key {key!r}: index {leaf} is out of range")
        parent[int(leaf)] = value
    else:
        parent[leaf] = value
    if fmt == "toml":
        import tomlkit

        path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(doc, indent=_json_indent(text)) + ("\n" if text.endswith("\n") else ""),
                        encoding="utf-8")
    else:
        import yaml

        edited = _yaml_line_edit(text, parts, value)
        if edited is not None:
            try:
                if yaml.safe_load(edited) == doc:
                    path.write_text(edited, encoding="utf-8")
                    return
            except yaml.YAMLError:
                pass
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _ini_dict(text: str) -> dict[str, dict[str, str]] | None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    return {k: dict(v) for k, v in parser.items()}


def _ini_line_edit(text: str, section: str, option: str, rendered: str) -> str | None:
    """``text`` with the option's line rewritten, or None (absent, repeated, multi-line)."""
    lines = text.split("\n")
    current, hits = None, []
    for i, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if header:
            current = header.group(1).strip()
        elif current == section:
            match = re.match(rf"^(\s*{re.escape(option)}\s*[=:]\s*)(.*)$", line)
            if match:
                hits.append((i, match.group(1)))
    if len(hits) != 1:
        return None
    i, prefix = hits[0]
    if i + 1 < len(lines) and lines[i + 1][:1] in (" ", "\t") and lines[i + 1].strip():
        return None  # a continuation line: a multi-line value
    lines[i] = prefix + rendered
    return "\n".join(lines)


def _yaml_line_edit(text: str, parts: list[str], value: Any) -> str | None:
    """``text`` with the block-mapping key's one-line scalar replaced (comment kept), or None."""
    import yaml

    if not isinstance(value, (str, int, float, bool)):
        return None
    lines = text.split("\n")
    start, parent_indent, found = 0, -1, -1
    for part in parts:
        found, child_indent = -1, None
        for i in range(start, len(lines)):
            stripped = lines[i].lstrip(" ")
            if not stripped or stripped.startswith("#"):
                continue
            indent = len(lines[i]) - len(stripped)
            if indent <= parent_indent:
                break
            child_indent = indent if child_indent is None else child_indent
            if indent == child_indent and re.match(rf"{re.escape(part)}\s*:(\s|$)", stripped):
                found = i
                break
        if found < 0 or child_indent is None:
            return None
        start, parent_indent = found + 1, child_indent
    match = re.match(r"^(\s*[^:#]+:\s+)([^'\"#|>\[{&*!\s][^#]*?)(\s+#.*)?$", lines[found])
    if not match:
        return None
    rendered = yaml.safe_dump(value, default_flow_style=True).strip()
    if rendered.endswith("\n..."):
        rendered = rendered[:-4].strip()
    rendered = rendered.removesuffix("...").strip()
    lines[found] = match.group(1) + rendered + (match.group(3) or "")
    return "\n".join(lines)
