"""The node's data dir: its term and vote (durable before they are acted on), a lock, the
last membership it read (so it can keep electing, and restore Redis, while Redis is empty),
the cluster's timing record it runs on (written before the node confirms it) and, once the
node saw itself removed, that it was (so it never joins again, even if Redis lost the
tombstone)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from ddg.election.core import HardState
from ddg.election.messages import MAX_TERM
from ddg.election.timing import TimingRecord
from ddg.errors import RegistryDataError, StorageError
from ddg.registry.records import Membership

NODE_ID_RE = re.compile(r"[0-9a-f]{32}")


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write temp file, fsync it, rename over PATH, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise StorageError(f"cannot read {path}: not a JSON object")
    return data


class DataDir:
    """Holds an exclusive lock on the directory for as long as the node runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def members_file(self) -> Path:
        return self.path / "members.json"

    @property
    def timing_file(self) -> Path:
        return self.path / "timing.json"

    @property
    def node_file(self) -> Path:
        return self.path / "node.json"

    @property
    def removed_file(self) -> Path:
        return self.path / "removed.json"

    def node_id(self) -> str:
        """This data dir's identity, made once: a member is this id, not a name and address."""
        data = _read(self.node_file)
        if data is None:
            node_id = uuid.uuid4().hex
            _write_atomic(self.node_file, {"node_id": node_id})
            return node_id
        value = data.get("node_id")
        if not isinstance(value, str) or not NODE_ID_RE.fullmatch(value):
            raise StorageError(f"{self.node_file} is corrupt: {data!r}")
        return value

    def node_id_if_any(self) -> str | None:
        """This data dir's identity, if it has one (never makes one)."""
        value = (_read(self.node_file) or {}).get("node_id")
        return value if isinstance(value, str) and NODE_ID_RE.fullmatch(value) else None

    def note_owner(self, *, name: str, cluster: str) -> None:
        """Record which node and cluster this data dir is (for `ddg-node data-dirs`)."""
        data = _read(self.node_file) or {}
        if data.get("name") != name or data.get("cluster") != cluster:
            _write_atomic(self.node_file, {**data, "name": name, "cluster": cluster})

    def owner(self) -> tuple[str | None, str | None]:
        """The node name and cluster note_owner recorded (None: not recorded)."""
        data = _read(self.node_file) or {}
        name, cluster = data.get("name"), data.get("cluster")
        return (name if isinstance(name, str) else None,
                cluster if isinstance(cluster, str) else None)

    def in_use(self) -> bool:
        """Whether a running node holds this data dir's lock."""
        try:
            fd = os.open(self.path / "lock", os.O_RDWR)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # cannot tell: count it as used
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops the lock we may have taken
        return False

    def open(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot use data dir {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(
                f"data dir {self.path} is in use by another ddg-node; give each node its own "
                "--data-dir (or --name)"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load_hard_state(self) -> HardState:
        data = _read(self.state_file)
        if data is None:
            return HardState()
        term, voted_for = data.get("term"), data.get("voted_for")
        if isinstance(term, bool) or not isinstance(term, int) or not 0 <= term <= MAX_TERM or not (
            voted_for is None or isinstance(voted_for, str)
        ):
            raise StorageError(f"{self.state_file} is corrupt: {data!r}")
        return HardState(term, voted_for)

    def save_hard_state(self, hard: HardState) -> None:
        _write_atomic(self.state_file, {"term": hard.term, "voted_for": hard.voted_for})

    def load_membership(self) -> Membership | None:
        data = _read(self.members_file)
        if data is None:
            return None
        try:
            return Membership.from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError, RegistryDataError) as exc:
            raise StorageError(f"{self.members_file} is corrupt: {exc}") from exc

    def save_membership(self, membership: Membership) -> None:
        _write_atomic(self.members_file, membership.to_json())

    def load_timing(self) -> TimingRecord | None:
        data = _read(self.timing_file)
        if data is None:
            return None
        try:
            return TimingRecord.from_json(json.dumps(data))
        except RegistryDataError as exc:
            raise StorageError(f"{self.timing_file} is corrupt: {exc}") from exc

    def save_timing(self, record: TimingRecord) -> None:
        _write_atomic(self.timing_file, json.loads(record.to_json()))

    def load_removed(self) -> dict[str, Any] | None:
        """What mark_removed wrote ({"name", "cluster", "version"}), or None."""
        return _read(self.removed_file)

    def mark_removed(self, *, name: str, cluster: str, version: int) -> None:
        _write_atomic(self.removed_file, {"name": name, "cluster": cluster, "version": version})
