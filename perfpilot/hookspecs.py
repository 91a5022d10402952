"""All perfpilot hook specifications.

Hooks are called with keyword arguments only. Registration hooks hand out a
``register`` callback (the style of the ``llm`` CLI) so the host owns deduplication and
provenance: a plugin never appends to a shared list itself.

A third-party plugin is a module (or object) with functions decorated with
:data:`perfpilot.hookimpl`, installed through the ``perfpilot`` entry-point group::

    [project.entry-points.perfpilot]
    my_collector = "my_package.perfpilot_plugin"
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT_NAME = "perfpilot"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------- measurement


@hookspec
def perfpilot_register_collectors(register: Callable[..., None]) -> None:
    """Register telemetry collectors.

    :param register: call ``register(factory)`` once per collector. ``factory`` is a
        callable (usually the collector class) taking one argument, the
        :class:`perfpilot.config.Settings` of the run, and returning an object that
        implements :class:`perfpilot.profilers.collector.Collector` (``name``,
        ``available()``, ``start(target)``, ``sample(now)``, ``stop()``). The factory
        must be cheap and must not touch hardware: that happens in ``available()`` and
        ``start()``. A later registration with the same name replaces an earlier one,
        so a plugin can override a built-in.

    Called once per plugin manager (all implementations run, results ignored).
    """


# ------------------------------------------------------------------ optimiser


@hookspec
def perfpilot_register_backends(register: Callable[..., None]) -> None:
    """Register LLM backends for the optimiser.

    :param register: call ``register(name, factory)``; ``factory(settings)`` returns an
        object with ``complete(messages: list[dict]) -> str`` (chat messages in the
        OpenAI ``{"role", "content"}`` shape, the reply's text returned).

    Called once per plugin manager (all implementations run, results ignored).
    """


@hookspec
def perfpilot_register_proposers(register: Callable[..., None]) -> None:
    """Register proposers (sources of candidate changes) for the optimiser.

    :param register: call ``register(name, factory)``; ``factory(settings, backend)``
        returns an object with ``propose(context) -> list[Proposal]`` and
        ``feedback(proposal, outcome) -> None``.

    Called once per plugin manager (all implementations run, results ignored).
    """


# ---------------------------------------------------------------- lifecycle


@hookspec
def perfpilot_profile_finished(profile: Any) -> None:
    """Called after a Profile is complete, before it is written or rendered.

    :param profile: the :class:`perfpilot.profilers.profile.Profile`; implementations
        may add entries to ``profile.annotations`` (namespaced by plugin name) but must
        not change measured figures.

    All implementations run; results ignored.
    """
