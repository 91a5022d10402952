"""Built-in telemetry collectors: ``cpu``, ``memory``, ``io``, ``gpu``, ``power`` and
``processes``. Each module is a pluggy plugin registered exactly like a third-party one (see
``perfpilot.registry.DEFAULT_PLUGINS``) and uses only public ``perfpilot.profilers`` API
(``snapshot``, ``procfs``, ``cputime``, ``counters``, ``hardware``): none imports another."""
