"""Fault injection for DuckDuckGoose: real partitions (iptables in a private network
namespace), process and Redis faults, an outside observer and a history checker.

Run `python -m ddg_faults --help`; see docs/faults.md.
"""
