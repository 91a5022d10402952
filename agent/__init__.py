"""The optimiser: the loop, proposals, the isolated workspace and its sandbox (``sandbox``),
the context sent to a proposer with secrets masked (``context``, ``secrets``,
``project_paths``), proposers and LLM backends (``proposers/``, ``backends/``, each a
Protocol), verification, ``advice`` (one finding asked about outside the loop, for pytest's
``--perfpilot-suggest`` and the daemon's ``--propose``), and the daemon (``daemon/``)."""
