"""Beside the election in a node: change feed, /watch, metrics, logs, --exec, lifeline, --vip.
May import: ddg.client (status types), ddg.election, ddg.util, ddg.errors."""
