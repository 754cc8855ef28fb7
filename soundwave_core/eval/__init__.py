"""Evaluation: scoring predictions (metrics), eval runs and benchmark presets."""
