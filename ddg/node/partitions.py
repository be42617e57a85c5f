"""Fault injection inside the node (`--allow-fault-injection`): drop every peer message to and
from named peers, as a partition would. Tests and the console's `p`/`h` keys use it; real
packet drops are the fault harness's job (ddg_faults). Also the body of the listener fault
(`/admin/fault/close-listener`; ddg.net.server closes the listening sockets)."""

from __future__ import annotations

import math
from typing import Any

from ddg.errors import MessageError


class Partitions:
    def __init__(self) -> None:
        self.peers: set[str] = set()
        self.everyone = False

    def blocked(self, peer: str) -> bool:
        return self.everyone or peer in self.peers

    def isolated_from(self, members: frozenset[str], me: str) -> list[str]:
        return sorted(members - {me}) if self.everyone else sorted(self.peers)

    @staticmethod
    def parse(data: Any) -> tuple[bool, set[str]]:
        """The body of /admin/partition and /admin/heal: (everyone, peers)."""
        if not isinstance(data, dict) or set(data) - {"peers", "all"}:
            raise MessageError("body must be {\"peers\": [names]} or {\"all\": true}")
        everyone = data.get("all", False)
        peers = data.get("peers", [])
        if not isinstance(everyone, bool) or not isinstance(peers, list) or not all(
            isinstance(p, str) for p in peers
        ):
            raise MessageError("'all' must be a boolean and 'peers' a list of names")
        return everyone, set(peers)

    def isolate(self, everyone: bool, peers: set[str], members: frozenset[str],
                me: str) -> None:
        unknown = peers - members
        if unknown:
            raise MessageError(f"not members: {', '.join(sorted(unknown))}")
        if me in peers:
            raise MessageError("a node cannot be partitioned from itself")
        if not everyone and not peers:
            raise MessageError("name at least one peer, or set \"all\": true")
        self.everyone = self.everyone or everyone
        self.peers |= peers

    def heal(self, everyone: bool, peers: set[str]) -> None:
        if peers and not everyone:
            self.peers -= peers
        else:
            self.peers.clear()
            self.everyone = False


LONGEST_LISTENER_FAULT = 600.0  # seconds


def parse_listener_fault(data: Any) -> float | None:
    """The body of /admin/fault/close-listener: {} (closed until reopened or restarted) or
    {"reopen_after_s": S}, 0 < S <= LONGEST_LISTENER_FAULT; returns S or None."""
    if not isinstance(data, dict) or set(data) - {"reopen_after_s"}:
        raise MessageError("body must be {} or {\"reopen_after_s\": seconds}")
    seconds = data.get("reopen_after_s")
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            math.isfinite(seconds) and 0 < seconds <= LONGEST_LISTENER_FAULT):
        raise MessageError("'reopen_after_s' must be a number of seconds > 0 and "
                           f"<= {LONGEST_LISTENER_FAULT:g}")
    return float(seconds)
