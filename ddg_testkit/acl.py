"""The least Redis ACL docs/operations.md gives a node, read from the docs, so that the tests
and the secured bed (ddg_faults.bed.secured) use the very line operators copy; and what the
sentinels must let the same user do (redis-py's Sentinel support asks SENTINEL MASTERS)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
# On a sentinel: what redis-py asks to find the master (AUTH needs no permission).
SENTINEL_RULES = ("resetkeys", "resetchannels", "-@all", "+ping", "+sentinel|masters",
                  "+sentinel|get-master-addr-by-name")


def documented_acl(cluster: str, password: str) -> list[str]:
    """The `ACL SETUSER ddg` rules from the docs, for CLUSTER ("*": any) and PASSWORD."""
    m = re.search(r"^ACL SETUSER ddg (.+)$", DOCS.read_text(), re.MULTILINE)
    assert m, "docs/operations.md lost its ACL SETUSER line"
    return m.group(1).replace("CLUSTER", cluster).replace("PASSWORD", password).split()


def sentinel_acl(password: str) -> list[str]:
    """The rules for the same user on the sentinels: finding the master, nothing else."""
    return ["on", f">{password}", *SENTINEL_RULES]
