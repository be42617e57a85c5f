"""A cluster's keys in Redis: the one layout, for the registry and for whoever cleans up after a
cluster (the supervisor on an external Redis).

For cluster C (docs/design.md):
  ddg:C:members   hash  name -> JSON {"address": ..., "joined_at": ..., "node_id": ...}
  ddg:C:version   int   bumped by every change, never reused
  ddg:C:events    pub/sub channel, one JSON message per change (no key)
  ddg:C:id        str   the cluster's id, written once by the node that bootstraps it
  ddg:C:removed   zset  node ids removed on purpose (score: the version), the last 100
  ddg:C:timing    str   the cluster's timing record (ddg.election.timing.TimingRecord, canonical
                        JSON)
  ddg:C:timing_seen  hash  member name -> the fingerprint of the timing record it confirmed
  ddg:C:version_seen  hash  member name -> "VERSION:MEMBERS:TERM", the membership it runs
  ddg:C:term_floor  int  no term at or below it may be won under the newest version
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

DEFAULT_CLUSTER = "ddg"


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """Cluster C's keys, in the order every registry script takes them as KEYS (the members
    first). `events` is the pub/sub channel, not a key: EXISTS and DEL find nothing under it."""

    members: str
    version: str
    events: str
    id: str
    removed: str
    timing: str
    timing_seen: str
    version_seen: str
    term_floor: str

    @classmethod
    def of(cls, cluster: str) -> ClusterKeys:
        prefix = f"ddg:{cluster}:"
        return cls(*(prefix + f.name for f in fields(cls)))

    @property
    def all(self) -> list[str]:
        """KEYS for a script, in this order."""
        return list(astuple(self))


def cluster_keys(cluster: str) -> list[str]:
    """Cluster CLUSTER's keys (and its channel), the members first."""
    return ClusterKeys.of(cluster).all
