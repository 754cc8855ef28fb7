"""A corpus layout and a benchmark preset of their own, registered like any component."""
