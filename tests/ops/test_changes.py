"""The change feed of a node: each change once, in order, with when the role began."""

from __future__ import annotations

from ddg.client import Role
from ddg.ops.changes import Change, Changes, View


def view(role: Role = Role.DUCK, term: int = 1, goose: str | None = "a") -> View:
    return View(role=role, state=role.value, term=term, goose=goose, members=("a", "b", "c"),
                version=3)


def test_only_changes_reach_listeners_in_order_and_role_since_follows_the_role() -> None:
    changes = Changes()
    seen: list[Change] = []
    changes.listen(seen.append)
    assert changes.observe(view(), at=1.0, wall=100.0) is not None
    assert changes.observe(view(), at=1.5, wall=100.5) is None  # nothing new
    assert changes.role_since == 1.0
    changes.observe(view(term=2, goose=None), at=2.0, wall=101.0)
    assert changes.role_since == 1.0, "a new term with the same role keeps the role's start"
    changes.observe(view(Role.GOOSE, term=2, goose="b"), at=2.5, wall=101.5)
    assert changes.role_since == 2.5
    assert [c.id for c in seen] == [1, 2, 3]
    assert seen[2].previous is not None and seen[2].previous.role is Role.DUCK
    assert seen[2].to_json()["role"] == "goose" and seen[2].to_json()["previous_role"] == "duck"
