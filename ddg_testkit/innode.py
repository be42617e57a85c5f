"""A Node in this process, for tests of its handlers and transport without a subprocess: node
"a" of members a, b, c (membership version 1), its data dir open, its core running and past
the start-up stickiness (it grants a vote), nothing started: no listener, no Redis."""

from __future__ import annotations

import random
import time
from pathlib import Path

from ddg.election.core import Election, HardState
from ddg.election.timing import Timing
from ddg.node.config import NodeConfig
from ddg.node.node import Node
from ddg.registry.records import Member, Membership


def node_in_process(tmp_path: Path, *, secret: bytes | None = None,
                    timing: Timing | None = None) -> Node:
    config = NodeConfig(name="a", port=1, data_dir=tmp_path / "a", secret=secret)
    node = Node(config, rng=random.Random(1))
    node.data.open()
    members = {n: Member(n, f"http://127.0.0.1:{i}", node_id=f"{i:032x}")
               for i, n in enumerate(("a", "b", "c"), 1)}
    node.sync.membership = Membership(1, members, "f" * 32)
    node.core = Election(name="a", timing=timing or Timing(), rng=node.rng,
                         now=time.monotonic() - 10, members=node.membership.names, version=1,
                         hard=HardState())
    node.core.last_heard = time.monotonic() - 10
    return node
