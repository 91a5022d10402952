"""The measuring engine: sessions and the sampling loop, the target's process tree and the
tick's one shared ``/proc`` read (``target``, ``snapshot``, ``procfs``), per-process
accounting (``cputime``, ``counters``), the hardware readers (``hardware``: RAPL, NVML, the
CPU watts estimate), the pytest meter (``block``), stacks and hot spots, the per-rank view
(``ranks``), the Profile data model, statistics (``stats``, ``measure``) and renderers.

``snapshot``, ``procfs``, ``cputime``, ``counters`` and ``hardware`` are public API for
collectors, the built-in ones and third-party ones alike. The engine never builds the plugin
registry: its callers hand it the collectors."""
