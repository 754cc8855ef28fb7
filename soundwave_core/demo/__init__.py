"""The real-weights CPU demo (`swv demo`)."""
