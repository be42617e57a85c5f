"""Maintenance scripts: `python -m scripts.screenshots` from the repository root."""
