"""Beside the election in a node: change feed, /watch streams, metrics, logs, --exec, lifeline.
May import: ddg.client (status types), ddg.election, ddg.util, ddg.errors."""
