"""The measuring engine: sessions, the sampling loop, process trees, stacks, the Profile
data model, statistics and renderers."""
