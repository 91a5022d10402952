"""``perfpilot daemon``: continuous telemetry of watched processes and the host.

``service`` runs it (``sampler`` ticks, ``snapshots`` takes py-spy stacks, ``findings``
judges them, ``advisor`` asks the proposer about findings with ``--propose``), ``store``
keeps it in SQLite, ``exporter`` serves ``/metrics``, ``/healthz`` and the JSON API,
``fleet`` merges several daemons' hot spots; ``config`` and ``watch`` say what to watch and
how."""
