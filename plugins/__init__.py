"""Built-in telemetry collectors. Each module is a pluggy plugin registered exactly like
a third-party one (see ``perfpilot.registry.DEFAULT_PLUGINS``)."""
