"""Component registries and plugin discovery (pluggy hooks, entry points)."""
