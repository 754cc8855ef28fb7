"""Data engineering: build, filter, augment and inspect manifests (`swv data`)."""
