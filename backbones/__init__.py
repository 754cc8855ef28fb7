"""LLM backbones (registered as ``backbone`` components)."""
