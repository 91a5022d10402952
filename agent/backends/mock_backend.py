"""The ``mock`` backend: replays scripted replies from a JSON file, in order.

The file (``--mock-replies FILE`` / ``mock_replies`` setting) holds a list, or an object
with a ``replies`` list; each entry is the reply text, or any other JSON value, which
is sent as its JSON text (so a scripted reply can be written as an object). Used for
tests and demos; plugin authors get the same class as
:class:`perfpilot.testing.ScriptedBackend`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from perfpilot.config import Settings
from perfpilot.errors import ConfigError
from perfpilot.hookspecs import hookimpl
from perfpilot.testing.backend import ScriptedBackend


def load_replies(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read mock replies {path}: {exc.strerror}", hint="check --mock-replies") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})",
                          hint="the mock replies file is a JSON list of reply strings") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})",
                          hint="the mock replies file is a UTF-8 JSON list of reply strings") from None
    if isinstance(data, dict):
        data = data.get("replies")
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of replies (or {{\"replies\": [...]}})")
    return [entry if isinstance(entry, str) else json.dumps(entry) for entry in data]


class MockBackend(ScriptedBackend):
    name = "mock"

    def __init__(self, settings: Settings) -> None:
        if not settings.mock_replies:
            raise ConfigError("the mock backend needs a replies file",
                              hint="pass --mock-replies FILE (a JSON list of reply strings)")
        super().__init__(load_replies(settings.mock_replies))


@hookimpl
def perfpilot_register_backends(register: Callable[..., None]) -> None:
    register("mock", MockBackend)
