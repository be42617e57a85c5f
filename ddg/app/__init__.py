"""Leader election inside a Python app: `member(...)` owns a ddg-node process and runs a job
only while it is the goose; `SyncMember` is the same for scripts and threads.
May import: everything below it (ddg.local for the node process, ddg.client to follow it)."""

from ddg.app.member import Change, Member, MemberConfig, member
from ddg.app.sync import GooseTerm, SyncMember
from ddg.errors import GooseLost, MemberClosed, MemberError, NodeExited

__all__ = ["Change", "GooseLost", "GooseTerm", "Member", "MemberClosed", "MemberConfig",
           "MemberError", "NodeExited", "SyncMember", "member"]
