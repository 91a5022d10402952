"""The optimiser: proposals, workspaces, proposers, LLM backends, verification, daemon."""
