"""Data-preparation helpers used by the recipes (see utils/ at the repository top)."""
