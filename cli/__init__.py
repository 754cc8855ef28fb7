"""The ``swv`` command line (Typer)."""
