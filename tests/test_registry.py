"""The plugin system: hookspecs documented, built-ins registered like third-party
plugins, a real third-party collector found through its entry point."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from perfpilot import hookimpl, hookspecs
from perfpilot.config import Settings
from perfpilot.errors import PluginError
from perfpilot.profilers.session import RunOptions, profile_command
from perfpilot.registry import DEFAULT_PLUGINS, build_plugin_manager


def test_every_hookspec_is_documented_with_params():
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("perfpilot_")]
    assert len(specs) >= 4
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        assert ":param" in doc, f"{spec.__name__} lacks :param docs"
        assert "Called" in doc or "called" in doc or "All implementations" in doc, f"{spec.__name__} lacks call semantics"


def test_default_plugins_register_like_third_party():
    plugin_set = build_plugin_manager(load="")
    names = plugin_set.plugin_names()
    assert plugin_set.load_errors == {}  # every built-in imports
    for module_name in DEFAULT_PLUGINS:
        assert module_name.rsplit(".", 1)[-1] in names
    # Built-ins are plain modules registered under their short name.
    assert plugin_set.pm.get_plugin("cpu") is not None


def test_disable_env_removes_a_builtin(monkeypatch):
    monkeypatch.setenv("PERFPILOT_DISABLE_PLUGINS", "gpu,power")
    names = build_plugin_manager().plugin_names()
    assert "gpu" not in names and "power" not in names and "cpu" in names


def test_unknown_collector_name_is_a_clear_error():
    with pytest.raises(PluginError, match="unknown collector.*nosuch"):
        build_plugin_manager().collectors(only=["cpu", "nosuch"])


class _Boom:
    name = "boom"

    def __init__(self, settings: Settings) -> None:
        pass

    def available(self):
        return True, ""

    def start(self, target):
        pass

    def sample(self, now):
        raise RuntimeError("sensor fell off")

    def stop(self):
        return {}


class _BoomPlugin:
    @hookimpl
    def perfpilot_register_collectors(self, register):
        register(_Boom)


def test_a_raising_collector_is_isolated_and_disabled():
    plugin_set = build_plugin_manager(extra_plugins=[(_BoomPlugin(), "boom")])
    profile = profile_command(["python3", "-c", "import time; time.sleep(0.5)"],
                              Settings(stacks=False, interval=0.05), RunOptions(plugin_set=plugin_set))
    boom = profile.collectors["boom"]
    assert boom["disabled"] is True
    assert any("sensor fell off" in e for e in boom["errors"])
    assert profile.target["exit_code"] == 0
    assert "cpu_user_s" in profile.summary  # everything else kept working


def _write_third_party_plugin(root: Path) -> None:
    (root / "ppthird.py").write_text(textwrap.dedent('''
        from perfpilot import hookimpl

        class Ticks:
            name = "ticks"
            def __init__(self, settings):
                self.n = 0
            def available(self):
                return True, ""
            def start(self, target):
                self.pid = target.pid
            def sample(self, now):
                self.n += 1
                return {"ticks.count": float(self.n)}
            def stop(self):
                return {"ticks_total": self.n}

        @hookimpl
        def perfpilot_register_collectors(register):
            register(Ticks)
    '''))
    dist = root / "ppthird-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ppthird\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[perfpilot]\nppthird = ppthird\n")


def test_third_party_collector_through_entry_point(tmp_path, perfpilot_cli):
    site = tmp_path / "site"
    site.mkdir()
    _write_third_party_plugin(site)
    out = tmp_path / "run.json"
    env = {"PYTHONPATH": str(site)}
    listing = perfpilot_cli("plugins", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert {"kind": "collector", "name": "ticks", "plugin": "ppthird", "available": True, "reason": ""} in rows

    result = perfpilot_cli("profile", "-q", "--no-stacks", "--interval", "50ms", "-o", str(out), "--",
                           "python3", "-c", "import time; time.sleep(0.4)", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["summary"]["ticks_total"] >= 3
    assert max(v for v in data["series"]["values"]["ticks.count"] if v is not None) >= 3

    # PERFPILOT_LOAD_PLUGINS restricts which entry points load.
    listing = perfpilot_cli("plugins", "--json", env={**env, "PERFPILOT_LOAD_PLUGINS": ""})
    assert "ticks" not in {row["name"] for row in json.loads(listing.stdout)}


class _QuietCpu:
    name = "cpu"

    def __init__(self, settings):
        pass

    def available(self):
        return True, "replaced by a test plugin"

    def start(self, target):
        pass

    def sample(self, now):
        return {"cpu.replaced": 1.0}

    def stop(self):
        return {}


class _OverrideCpu:
    @hookimpl
    def perfpilot_register_collectors(self, register):
        register(_QuietCpu)


def test_a_later_plugin_overrides_a_builtin_of_the_same_name():
    collectors = build_plugin_manager(extra_plugins=[(_OverrideCpu(), "my_cpu")]).collectors()
    assert collectors["cpu"].factory is _QuietCpu
    assert collectors["cpu"].plugin == "my_cpu"


def test_the_engine_never_builds_the_registry_callers_hand_it_in() -> None:
    # Dependency direction: perfpilot (front door) -> agent -> profilers <- plugins.
    import ast

    engine = Path(__file__).resolve().parent.parent / "profilers"
    importers = []
    for path in engine.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n.startswith(("perfpilot.registry", "perfpilot.plugins")) for n in names):
                importers.append(path.name)
    assert importers == []
    with pytest.raises(ValueError, match="plugin_set is required"):
        profile_command(["true"], Settings(stacks=False), RunOptions())


class _TreeRss:
    """A third-party collector on the public per-tick read, as the built-ins use it."""

    name = "treerss"

    def __init__(self, settings: Settings) -> None:
        self.target: Any = None
        self.snapshots: list[Any] = []

    def available(self) -> tuple[bool, str]:
        return True, ""

    def start(self, target: Any) -> None:
        self.target = target

    def sample(self, now: float) -> dict[str, float]:
        snap = self.target.snapshot(now)
        self.snapshots.append(snap)
        return {"treerss.rss_bytes": float(snap.rss_bytes)}

    def stop(self) -> dict[str, Any]:
        return {}


class _TreeRssPlugin:
    def __init__(self) -> None:
        self.made: list[_TreeRss] = []

    @hookimpl
    def perfpilot_register_collectors(self, register: Any) -> None:
        def make(settings: Settings) -> _TreeRss:
            self.made.append(_TreeRss(settings))
            return self.made[-1]

        register("treerss", make)


def test_a_third_party_collector_shares_the_ticks_proc_read_without_the_cpu_plugin() -> None:
    plugin = _TreeRssPlugin()
    plugin_set = build_plugin_manager(disable="cpu", extra_plugins=[(plugin, "treerss")])
    code = "b = bytearray(80 << 20); b[::4096] = b'1' * len(b[::4096]); import time; time.sleep(0.4)"
    profile = profile_command(["python3", "-c", code], Settings(stacks=False, interval=0.05),
                              RunOptions(plugin_set=plugin_set, capture_output=True))
    assert "cpu" not in profile.collectors and profile.collectors["treerss"]["errors"] == []
    values = profile.series["values"]
    # the memory collector's RSS and ours come from one read per tick: equal to the byte
    assert values["treerss.rss_bytes"] == values["memory.rss_bytes"]
    assert max(values["memory.rss_bytes"]) >= 80 << 20
    snaps = plugin.made[0].snapshots
    assert len({id(s) for s in snaps}) == len(snaps) >= 3  # one snapshot per tick, a fresh one each tick
