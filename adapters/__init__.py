"""Adapters between the audio encoder and the LLM (registered as ``adapter`` components)."""
