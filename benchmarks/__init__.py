"""The failover benchmark: `python -m benchmarks.failover` from the repository root."""
