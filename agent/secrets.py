"""Secrets masked by value, in everything perfpilot sends to an LLM or writes to disk.

Matching names ("password", "token") is not enough: a DSN with a password in a hot
function, a key printed by a failing test, a ``.env`` value copied into a config file
all carry the secret without its name. A :class:`Masker` therefore knows *values*:

- every value of the process environment whose name looks secret (``*_KEY``,
  ``*TOKEN*``, ``DATABASE_URL`` …) or whose value does (credentials in a URL, a known
  key shape, a high-entropy token);
- every value in the project's ``.env`` / ``.env.*`` files (values shorter than
  :data:`MIN_VALUE` are skipped: ``DEBUG=1`` would otherwise erase every "1");
- whatever the detectors find in the text itself, which is then remembered, so a DSN
  password found in source is masked when a test later prints it bare.

The detectors are `detect-secrets <https://github.com/Yelp/detect-secrets>`_ plugins
(URL credentials, AWS/GitHub/Slack/Stripe/OpenAI/… key shapes, private keys, JWTs,
``password = "…"`` assignments, quoted high-entropy strings), used through their
``analyze_string`` only: the plugins' ``verify`` would send a found key to its service
to check it, which is exactly what must never happen. Two small additions cover
what its ad-hoc scan handles badly: credentials in any ``scheme://user:pw@host`` and
*unquoted* high-entropy tokens (test output has no quotes), with the plugins' own
entropy measure and limits.

:attr:`Masker.count` is the number of distinct values masked so far; the optimiser's
report states it. The values themselves are only ever held in memory.
"""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

MASK = "***"
MIN_VALUE = 6  # shorter values are too common to replace everywhere
MAX_ENV_FILES = 20
MAX_DIRS = 2000  # folders looked into for .env files

_SECRET_NAME = re.compile(
    r"(?i)(key|secret|token|passw|passwd|pwd|credential|auth|dsn|database_url|db_url|private|cookie|session|"
    r"signature|salt|cert)")
# Names that match the words above but never hold a secret.
_NOT_SECRET_NAMES = {"PWD", "OLDPWD", "SSH_AUTH_SOCK", "XAUTHORITY", "GPG_AGENT_INFO", "KRB5CCNAME",
                     "SESSION_MANAGER", "XDG_SESSION_ID", "XDG_SESSION_TYPE", "XDG_SESSION_CLASS",
                     "XDG_SESSION_DESKTOP", "DBUS_SESSION_BUS_ADDRESS", "SSL_CERT_FILE", "SSL_CERT_DIR",
                     "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHONHASHSEED"}
_URL_CREDENTIALS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,20}://([^\s:/@'\"]*):([^\s@/'\"]+)@")
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{20,}={0,2}")
_HEX_TOKEN = re.compile(r"\b[0-9a-fA-F]{32,}\b")
_KEY_SHAPES = [
    # OpenAI/Stripe-style; a digit required, or sk_learn_model_selection would be a key
    re.compile(r"\b(?:sk|rk|pk)[-_](?:live|test|proj)?[-_]?(?=[A-Za-z_\-]*\d)[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-]{16,}"),
]
# key = "value" where the name says it is secret (what test output and config files look like)
_SECRET_ASSIGN = re.compile(
    r"""(?ix)(\b[\w.-]*(?:api[_-]?key|secret|token|passw(?:or)?d|credential|auth)[\w.-]*\b\s*[:=]\s*)
    (["']?)([^\s"',;()\[\]{}]{6,})(\2)(?![^\s"',;])""")
# Plugins that flag things which are not secrets in prompts and reports.
_SKIPPED_PLUGINS = {"Public IP (ipv4)"}


@lru_cache(maxsize=1)
def _plugins() -> tuple[Any, ...]:
    """detect-secrets' detectors, each built with its defaults (no settings file, no network)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    plugins = []
    for secret_type, cls in get_mapping_from_secret_type_to_class().items():
        if secret_type in _SKIPPED_PLUGINS:
            continue
        try:
            plugins.append(cls())
        except TypeError:  # a plugin that needs configuration we do not have
            continue
    return tuple(plugins)


def shannon_entropy(text: str) -> float:
    if not text:
        return 0.0
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_random(token: str) -> bool:
    """A high-entropy token: base64-like with mixed case and digits above detect-secrets'
    base64 limit (4.5 bits/char), or long hex above its hex limit (3.0)."""
    core = token.rstrip("=")
    if len(core) >= 32 and re.fullmatch(r"[0-9a-fA-F]+", core):
        return shannon_entropy(core) > 3.0 and any(c.isdigit() for c in core) and any(c.isalpha() for c in core)
    if len(core) < 20 or core.startswith("/") or "//" in core:
        return False
    if not (any(c.isdigit() for c in core) and any(c.islower() for c in core) and any(c.isupper() for c in core)):
        return False
    return shannon_entropy(core) > 4.5


def detect(text: str) -> set[str]:
    """Secret values found in ``text`` (each a substring of it)."""
    found: set[str] = set()
    for match in _URL_CREDENTIALS.finditer(text):
        found.add(match.group(2))
    for pattern in _KEY_SHAPES:
        found.update(m.group(0) for m in pattern.finditer(text))
    found.update(m.group(3) for m in _SECRET_ASSIGN.finditer(text) if m.group(3).lower() not in ("bearer", "basic"))
    found.update(m.group(0) for m in _TOKEN.finditer(text) if looks_random(m.group(0)))
    found.update(m.group(0) for m in _HEX_TOKEN.finditer(text) if looks_random(m.group(0)))
    for line in text.splitlines():
        found.update(_plugin_hits(line))
    return {value for value in found if len(value) >= MIN_VALUE and MASK not in value and value in text}


def _plugin_hits(line: str) -> Iterable[str]:
    if len(line) > 4000:  # a minified blob: the regexes above still ran over it
        return ()
    hits = []
    for plugin in _plugins():
        for value in plugin.analyze_string(line):
            limit = getattr(plugin, "entropy_limit", None)
            if limit is not None and plugin.calculate_shannon_entropy(value) <= limit:
                continue
            hits.append(value)
    return hits


def secret_env_values(environ: Mapping[str, str]) -> set[str]:
    """Values of the environment that are secret by their name or by their shape."""
    values = set()
    for name, value in environ.items():
        value = value.strip()
        if len(value) < MIN_VALUE or name.upper() in _NOT_SECRET_NAMES:
            continue
        if value.startswith("/") and "://" not in value:  # a path (a key *file*'s location is not the key)
            continue
        if _SECRET_NAME.search(name):
            values.add(value)
            values.update(m.group(2) for m in _URL_CREDENTIALS.finditer(value))
        else:
            values.update(detect(value))
    return values


def env_file_values(project: Path) -> set[str]:
    """Every value in the project's ``.env*`` files (and a DSN's password on its own)."""
    values: set[str] = set()
    for path in _env_files(project):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            value = line.split("=", 1)[1].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            if len(value) >= MIN_VALUE:
                values.add(value)
            values.update(m.group(2) for m in _URL_CREDENTIALS.finditer(value))
    return values


def _env_files(project: Path) -> list[Path]:
    """``.env`` / ``.env.*`` up to 3 folders deep; bounded, since a daemon's "project" can be ``/``."""
    found: list[Path] = []
    skip = {".git", "node_modules", ".venv", "venv", "__pycache__", ".tox", ".nox", "site-packages", "proc", "sys"}
    visited = 0
    try:
        for root, dirs, files in os.walk(project):
            visited += 1
            found.extend(Path(root) / f for f in files if f == ".env" or f.startswith(".env."))
            depth = len(Path(root).relative_to(project).parts)
            dirs[:] = [] if depth >= 3 else sorted(d for d in dirs if d not in skip)
            if len(found) >= MAX_ENV_FILES or visited >= MAX_DIRS:
                break
    except (OSError, ValueError):
        pass
    return sorted(found)[:MAX_ENV_FILES]


class Masker:
    """Replaces secret values with ``***``; learns each value a detector finds."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._known: set[str] = set()
        self._masked: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(values)

    @classmethod
    def for_project(cls, project: Path | None, *, environ: Mapping[str, str] | None = None,
                    extra: Iterable[str] = ()) -> "Masker":
        values = secret_env_values(os.environ if environ is None else environ)
        if project is not None:
            values |= env_file_values(Path(project))
        return cls([*values, *extra])

    def add(self, values: Iterable[str]) -> None:
        new = {v for v in (str(v).strip() for v in values) if len(v) >= MIN_VALUE and v != MASK} - self._known
        if new:
            self._known |= new
            # Longest first, so a DSN goes whole before its password alone is replaced inside it.
            ordered = sorted(self._known, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))

    @property
    def count(self) -> int:
        """How many distinct values have been masked so far."""
        return len(self._masked)

    def mask_text(self, text: str) -> str:
        if not text:
            return text
        found = detect(text)
        if found:
            self.add(found)
        if self._pattern is not None:
            text = self._pattern.sub(self._replace, text)
        # A URL's password is masked in place whatever its length ("pw" alone is too short to
        # replace everywhere, but in user:pw@host it is certainly the password).
        text = _URL_CREDENTIALS.sub(self._mask_url, text)
        return text

    def _mask_url(self, match: re.Match[str]) -> str:
        if match.group(2) == MASK:
            return match.group(0)
        self._masked.add(match.group(2))
        start, end = match.span(2)
        whole = match.group(0)
        return whole[: start - match.start()] + MASK + whole[end - match.start():]

    def _replace(self, match: re.Match[str]) -> str:
        self._masked.add(match.group(0))
        return MASK

    def mask_obj(self, obj: Any) -> Any:
        """A copy of a JSON-like value with every string (keys too) masked."""
        if isinstance(obj, str):
            return self.mask_text(obj)
        if isinstance(obj, dict):
            return {self.mask_text(k) if isinstance(k, str) else k: self.mask_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.mask_obj(v) for v in obj)
        return obj


def mask_secrets(text: str) -> str:
    """Detector-only masking (no known values): for one-off strings such as a command line."""
    return Masker().mask_text(text)
