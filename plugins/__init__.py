"""swv's own plugins: the built-in components, registered through the public hooks."""
