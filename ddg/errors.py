"""One exception tree for the whole package, so callers can catch DdgError and nothing else."""

from __future__ import annotations


class DdgError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(DdgError, ValueError):
    """A setting is missing, malformed or out of range."""


class TimingMismatch(ConfigError):
    """Timing flags that disagree with the cluster's timing record: the node does not start."""


class RegistryError(DdgError):
    """The Redis registry could not be read or changed."""


class RegistryUnavailable(RegistryError):
    """Redis did not answer in time; the caller may retry."""


class RegistryAuthError(RegistryError):
    """Redis refused the credentials: retrying will not help until the operator fixes them."""


class RegistryDataError(RegistryError):
    """The registry keys hold something no node wrote (wrong type, bad version, bad entry)."""


class ClusterMismatch(RegistryError):
    """The registry holds another cluster (another cluster id) than the one this node is in."""


class NoCluster(RegistryError):
    """The registry holds no cluster yet: only a node started with --bootstrap may create it."""


class NoTimingRecord(NoCluster):
    """The cluster exists but its timing record does not (yet): a new node waits for it."""


class RegistryFull(RegistryError):
    """The cluster already has the most members a registry may hold."""


class ChangeWaiting(RegistryError):
    """A join or removal the registry holds back: the current membership version is not yet
    confirmed by a majority of its members. Nothing was written; try again later."""

    def __init__(self, message: str, *, version: int = 0, members: int = 0,
                 waiting_for: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.version = version
        self.members = members
        self.waiting_for = waiting_for


class NameConflict(RegistryError):
    """The name is already registered by another node (another data dir)."""

    def __init__(self, message: str, *, name: str = "", address: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.address = address  # where the other node is registered, if readable


class NotAMember(RegistryError):
    """The name is not in the registry."""


class Removed(RegistryError):
    """This data dir's node was removed from its cluster on purpose: it does not join again
    (a new member starts from an empty data dir). ddg-node exits with EXIT_STATUS, which a
    unit's RestartPreventExitStatus= names so that it is not restarted in a loop."""

    EXIT_STATUS = 3

    def __init__(self, message: str, *, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version  # the membership version that removed it, if known


class StorageError(DdgError):
    """The node's data dir could not be read, written or locked."""


class MessageError(DdgError):
    """A peer message is malformed; the HTTP layer turns it into a 4xx."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class ToolError(DdgError):
    """An external program the project runs is missing or unusable (ddg.local.tools)."""


class EmbeddedRedisError(DdgError):
    """The private redis-server could not be found or started."""


class MemberError(DdgError):
    """An app's member (ddg.app) could not join its cluster, or its node process ended."""


class NodeExited(MemberError):
    """The node process a member owns is gone: the member is no goose and never will be again;
    leave the `member(...)` block and enter a new one to rejoin."""


class MemberClosed(MemberError):
    """The member's block was left: it has no node any more."""


class GooseLost(MemberError):
    """Raised by GooseTerm.check() in a synchronous job: the node may not hold the lease of
    the job's term any more; stop writing."""
