"""The election: pure state machine, peer messages, timing, clock-rate evidence, names, roles.
May import: the standard library and ddg.errors only (no I/O, no third-party package)."""
