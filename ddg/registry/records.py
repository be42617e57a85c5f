"""What a cluster's registry holds, parsed strictly: its members and membership version, the
confirmations, the timing record as read. A registry entry no node wrote is a
RegistryDataError naming it, never a member. No Redis here (ddg.registry.registry reads it)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ddg.election.messages import MAX_TERM, MAX_VERSION
from ddg.election.names import NAME_RE
from ddg.election.timing import TimingRecord
from ddg.errors import RegistryDataError

MAX_MEMBERS = 100  # a leader election needs a handful; beyond this a registry is garbage
CLUSTER_ID_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class TimingState:
    """The cluster's timing as the registry holds it: the record (None: none, as in a cluster
    made by an older version), its raw text (what a write compares against), which members
    have confirmed it and which have not."""

    record: TimingRecord | None
    raw: str | None
    confirmed: frozenset[str] = frozenset()
    waiting_for: tuple[str, ...] = ()  # members that have not confirmed the record
    problem: str | None = None  # a record no node wrote: not used

    def confirmed_by(self, name: str) -> bool:
        return name in self.confirmed

    def has_member(self, name: str) -> bool:
        """Whether NAME is a member (True while Redis holds no members: lost data)."""
        return name in self.confirmed or name in self.waiting_for or not (
            self.confirmed or self.waiting_for)


@dataclass(frozen=True, slots=True)
class Joined:
    """What a join (add) returns: the membership version and the timing record at that moment."""

    version: int
    timing: TimingRecord | None
    timing_problem: str | None = None


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    address: str
    joined_at: float = 0.0
    node_id: str | None = None  # the member's data dir; None only for pre-identity entries

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "joined_at": self.joined_at}
        if self.node_id is not None:
            out["node_id"] = self.node_id
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def members_hash(names: frozenset[str] | set[str] | dict[str, Any]) -> str:
    """What a confirmation says about the set of names it saw (as _GATE computes it, in any
    order): a confirmation of the same version number from a forked history (Redis lost
    data) does not count."""
    return str(sum(int(hashlib.sha1(n.encode()).hexdigest()[:10], 16) for n in names))


@dataclass(frozen=True, slots=True)
class Membership:
    version: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    cluster_id: str | None = None  # None: Redis holds no cluster (or a cache from before ids)
    # From a registry read (not cached in members.json): the term floor of the newest change,
    # and the reader's own confirmation ("VERSION:MEMBERS:TERM"; None: none there).
    term_floor: int = field(default=0, compare=False)
    confirmation: str | None = field(default=None, compare=False)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.members)

    def confirmation_by(self, term: int) -> str:
        """The confirmation of this membership by a node in TERM."""
        return f"{self.version}:{members_hash(self.names)}:{term}"

    def confirmed_in(self, confirmation: str | None) -> bool:
        """Whether CONFIRMATION (whatever its term) is of this membership."""
        want = f"{self.version}:{members_hash(self.names)}:"
        return confirmation is not None and confirmation.startswith(want)

    def address_of(self, name: str) -> str | None:
        m = self.members.get(name)
        return m.address if m else None

    def to_json(self) -> dict[str, Any]:
        """members.json: with the term floor, which a node restarted on it while Redis is
        away must honour as it did when it adopted this version."""
        out: dict[str, Any] = {
            "version": self.version,
            "cluster_id": self.cluster_id,
            "members": {n: m.to_dict() for n, m in sorted(self.members.items())},
        }
        if self.term_floor:
            out["term_floor"] = self.term_floor
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Membership:
        raw = data["members"]
        if not isinstance(raw, dict):
            raise RegistryDataError("members is not an object")
        members = {n: parse_entry(n, v) for n, v in raw.items()}
        cluster_id = data.get("cluster_id")
        if cluster_id is not None:
            cluster_id = check_cluster_id(cluster_id)
        floor = data.get("term_floor", 0)
        if isinstance(floor, bool) or not isinstance(floor, int) or not 0 <= floor <= MAX_TERM:
            raise RegistryDataError(f"term_floor {floor!r} is not a term")
        return cls(check_version(data["version"]), members, cluster_id, term_floor=floor)


def check_version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        raise RegistryDataError(f"version {value!r} is not an integer in 0..{MAX_VERSION}")
    return value


def check_cluster_id(value: Any) -> str:
    if not isinstance(value, str) or not CLUSTER_ID_RE.fullmatch(value):
        raise RegistryDataError(f"cluster id {str(value)[:40]!r} is not 32 hex digits")
    return value


def parse_entry(name: Any, value: Any) -> Member:
    """One member entry, strictly: a registry entry no node wrote is a problem, not a member."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RegistryDataError(f"member name {str(name)[:70]!r} is not a valid node name")
    obj = json.loads(value) if isinstance(value, str) else value
    if not isinstance(obj, dict):
        raise RegistryDataError(f"member {name!r}: entry is not a JSON object")
    address, joined, node_id = obj.get("address"), obj.get("joined_at", 0.0), obj.get("node_id")
    if not isinstance(address, str) or not address.startswith(("http://", "https://")):
        raise RegistryDataError(f"member {name!r}: address {str(address)[:70]!r} is not a URL")
    if isinstance(joined, bool) or not isinstance(joined, int | float) or not math.isfinite(
            joined):
        raise RegistryDataError(f"member {name!r}: joined_at is not a number")
    if node_id is not None and (not isinstance(node_id, str) or not CLUSTER_ID_RE.fullmatch(
            node_id)):
        raise RegistryDataError(f"member {name!r}: node_id is not 32 hex digits")
    return Member(name, address, float(joined), node_id)


def as_text(raw: Any, what: str) -> str:
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise RegistryDataError(f"{what} {raw[:40]!r} is not UTF-8") from None
    return str(raw)


def parse_timing(raw: Any, key: str) -> tuple[TimingRecord | None, str | None]:
    """The timing record, or None and why not: a record no node wrote is not used."""
    if raw is None or raw is False:
        return None, None
    try:
        return TimingRecord.from_json(as_text(raw, key)), None
    except RegistryDataError as exc:
        return None, f"{key}: {exc}"


def parse_registry(key_types: tuple[str, str, str], version: Any, cluster_id: Any,
                   flat: list[Any], keys: tuple[str, str, str], *, term_floor: Any = None,
                   confirmation: Any = None) -> Membership:
    """Validate what _READ returned; any problem raises RegistryDataError naming it."""
    for typ, want, key in zip(key_types, ("hash", "string", "string"), keys, strict=True):
        if typ not in (want, "none"):
            raise RegistryDataError(f"{key} is a {typ}, not a {want}")
    if version is None or version is False:
        v = 0
    else:
        text = as_text(version, keys[1])
        if not text.isascii() or not text.isdigit():
            raise RegistryDataError(f"{keys[1]} is {text[:40]!r}, not a version number")
        v = check_version(int(text))
    cid = None if cluster_id in (None, False) else check_cluster_id(as_text(cluster_id, keys[2]))
    if len(flat) // 2 > MAX_MEMBERS:
        raise RegistryDataError(f"{keys[0]} has {len(flat) // 2} members; at most "
                                f"{MAX_MEMBERS} are allowed")
    members: dict[str, Member] = {}
    for i in range(0, len(flat) - 1, 2):
        name = as_text(flat[i], f"a member name in {keys[0]}")
        try:
            members[name] = parse_entry(name, as_text(flat[i + 1], f"member {name!r}"))
        except ValueError as exc:
            raise RegistryDataError(f"member {name!r}: entry is not JSON ({exc})") from None
    if members and v == 0:
        raise RegistryDataError(f"{keys[0]} has members but {keys[1]} is missing")
    floor = 0
    if term_floor not in (None, False):
        text = as_text(term_floor, "the term floor")
        if not text.isascii() or not text.isdigit() or int(text) > MAX_TERM:
            raise RegistryDataError(f"the term floor is {text[:40]!r}, not a term")
        floor = int(text)
    mine = None if confirmation in (None, False) else as_text(confirmation, "a confirmation")
    return Membership(v, members, cid, term_floor=floor, confirmation=mine)
