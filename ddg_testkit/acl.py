"""The least Redis ACLs the docs give user `ddg`, read from the docs, so that the tests and the
secured bed (ddg_faults.bed.secured) use the very lines operators copy: on the data servers
(docs/operations.md) and on the sentinels (docs/deploy.md: it may only ask where the master
is, as redis-py's Sentinel support does)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented_acl(cluster: str, password: str) -> list[str]:
    """The `ACL SETUSER ddg` rules from the docs, for CLUSTER ("*": any) and PASSWORD."""
    m = re.search(r"^ACL SETUSER ddg (.+)$", (DOCS / "operations.md").read_text(), re.MULTILINE)
    assert m, "docs/operations.md lost its ACL SETUSER line"
    return m.group(1).replace("CLUSTER", cluster).replace("PASSWORD", password).split()


def sentinel_acl(password: str) -> list[str]:
    """The sentinels' `user ddg` rules from docs/deploy.md, with PASSWORD."""
    m = re.search(r"^user ddg (on >\$DDG_REDIS_PASSWORD -@all .*\+sentinel\|.*)$",
                  (DOCS / "deploy.md").read_text(), re.MULTILINE)
    assert m, "docs/deploy.md lost the sentinels' `user ddg` line"
    return m.group(1).replace("$DDG_REDIS_PASSWORD", password).split()
