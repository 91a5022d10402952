"""The plugin registry: one pluggy PluginManager named ``perfpilot``.

Built-in plugins are listed in :data:`DEFAULT_PLUGINS` and registered exactly like
third-party ones (``pm.register(module, name)``). Third-party plugins come from the
``perfpilot`` entry-point group.

Selection, in the style of the ``llm`` CLI:

* ``PERFPILOT_LOAD_PLUGINS=a,b`` -- load only these entry-point plugins (empty: none).
* ``PERFPILOT_DISABLE_PLUGINS=gpu,x`` -- never register these (built-in or not).
* ``--plugins cpu,memory`` / ``--disable gpu`` on the CLI -- restrict which registered
  plugins take part in a run (see :func:`build_plugin_manager`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable

import pluggy

from perfpilot import hookspecs
from perfpilot.errors import PluginError

ENTRY_POINT_GROUP = "perfpilot"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "perfpilot.plugins.cpu",
    "perfpilot.plugins.memory",
    "perfpilot.plugins.io",
    "perfpilot.plugins.gpu",
    "perfpilot.plugins.power",
    "perfpilot.plugins.processes",
    "perfpilot.agent.backends.openai_backend",
    "perfpilot.agent.backends.mock_backend",
    "perfpilot.agent.proposers.llm_proposer",
    "perfpilot.agent.proposers.knob_proposer",
)


def _split(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _short_name(module_name: str) -> str:
    return module_name.rsplit(".", 1)[-1]


@dataclass
class Registered:
    """What a registration hook handed us, with where it came from."""

    name: str
    factory: Callable[..., Any]
    plugin: str


@dataclass
class PluginSet:
    """A plugin manager plus what it failed to load (reported, never fatal)."""

    pm: pluggy.PluginManager
    load_errors: dict[str, str] = field(default_factory=dict)

    def plugin_names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def collectors(
        self, *, only: Iterable[str] | None = None, disable: Iterable[str] = ()
    ) -> dict[str, Registered]:
        """Registered collectors by name, filtered by ``--plugins``/``--disable``.

        Unknown names in ``only``/``disable`` are an error naming them, so a typo never
        silently profiles with the wrong set.
        """
        found = self._collect("perfpilot_register_collectors", keyed_by_attr=True)
        asked = set(only or ()) | set(disable)
        unknown = sorted(asked - set(found))
        if unknown:
            raise PluginError(
                f"unknown collector(s): {', '.join(unknown)}",
                hint=f"known: {', '.join(sorted(found)) or 'none'}; see `perfpilot plugins`",
            )
        keep = set(only) if only else set(found)
        return {n: r for n, r in found.items() if n in keep and n not in set(disable)}

    def make_collectors(self, settings: Any) -> list[Any]:
        """Fresh collector instances for one run, selected by ``settings.plugins`` /
        ``settings.disable_plugins`` (a session's
        :class:`~perfpilot.profilers.collector.CollectorSource`)."""
        registered = self.collectors(only=settings.plugins or None, disable=settings.disable_plugins)
        return [entry.factory(settings) for entry in registered.values()]

    def profile_finished(self, profile: Any) -> None:
        """Call every ``perfpilot_profile_finished`` hook."""
        self.pm.hook.perfpilot_profile_finished(profile=profile)

    def backends(self) -> dict[str, Registered]:
        return self._collect("perfpilot_register_backends")

    def proposers(self) -> dict[str, Registered]:
        return self._collect("perfpilot_register_proposers")

    def _collect(self, hook_name: str, keyed_by_attr: bool = False) -> dict[str, Registered]:
        found: dict[str, Registered] = {}
        hook = getattr(self.pm.hook, hook_name)
        # Call each implementation separately so we know which plugin registered what.
        # get_hookimpls() lists them in registration order (built-ins, then entry
        # points, then extras), so a later registration of a name replaces an earlier
        # one: a third-party plugin can override a built-in.
        for impl in hook.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)

            def register(*args: Any, _plugin: str = plugin_name) -> None:
                if keyed_by_attr:
                    if len(args) == 1:
                        factory = args[0]
                        name = getattr(factory, "name", None) or getattr(factory, "__name__", "")
                    else:
                        name, factory = args
                else:
                    name, factory = args
                if not name:
                    raise PluginError(f"plugin {_plugin!r} registered something without a name")
                found[str(name)] = Registered(str(name), factory, _plugin)

            impl.function(register=register)
        return found


def build_plugin_manager(
    *,
    load: str | None = None,
    disable: str | None = None,
    extra_plugins: Iterable[tuple[Any, str]] = (),
) -> PluginSet:
    """Build a fresh plugin manager.

    :param load: comma list of entry-point plugins to load; default from
        ``PERFPILOT_LOAD_PLUGINS`` (unset: all installed).
    :param disable: comma list of plugin names never to register; default from
        ``PERFPILOT_DISABLE_PLUGINS``.
    :param extra_plugins: ``(plugin_object, name)`` pairs to register too (tests, embedding).
    """
    load_names = _split(load if load is not None else os.environ.get("PERFPILOT_LOAD_PLUGINS"))
    disabled = _split(disable if disable is not None else os.environ.get("PERFPILOT_DISABLE_PLUGINS")) or set()

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    result = PluginSet(pm)

    def wanted(name: str) -> bool:
        return name not in disabled

    for module_name in DEFAULT_PLUGINS:
        name = _short_name(module_name)
        if not wanted(name):
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            # A built-in whose optional part is missing is reported, not fatal.
            result.load_errors[name] = f"cannot import {module_name}: {exc}"
            continue
        pm.register(module, name)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if load_names is not None and ep.name not in load_names:
            continue
        if not wanted(ep.name) or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break perfpilot
            result.load_errors[ep.name] = f"cannot load entry point {ep.value}: {exc}"
            continue
        pm.register(plugin, ep.name)

    for plugin, name in extra_plugins:
        if wanted(name):
            pm.register(plugin, name)
    return result
