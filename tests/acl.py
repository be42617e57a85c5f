"""The documented least ACL, for the tests (`from acl import documented_acl`): the one reader
is ddg_testkit.acl, which the fault harness's secured bed uses too."""

from __future__ import annotations

from ddg_testkit.acl import documented_acl

__all__ = ["documented_acl"]
