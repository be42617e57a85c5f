"""The least Redis ACL docs/operations.md gives a node, read from the docs, so that the tests
check the very line operators copy."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def documented_acl(cluster: str, password: str) -> list[str]:
    """The `ACL SETUSER ddg` rules from the docs, for CLUSTER ("*": any) and PASSWORD."""
    m = re.search(r"^ACL SETUSER ddg (.+)$", DOCS.read_text(), re.MULTILINE)
    assert m, "docs/operations.md lost its ACL SETUSER line"
    return m.group(1).replace("CLUSTER", cluster).replace("PASSWORD", password).split()
