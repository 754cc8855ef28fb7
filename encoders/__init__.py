"""Audio encoders (registered as ``encoder`` components)."""
