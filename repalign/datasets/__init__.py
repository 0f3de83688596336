"""Small real input sets built from data that installed packages ship (used by the demo and tests)."""
