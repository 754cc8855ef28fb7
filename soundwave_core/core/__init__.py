"""Foundations every layer may use: errors, file I/O, Hub ids, dtypes, audio reading, component config base, progress."""
