"""Helpers for the tests, the benchmark, the screenshots and the fault harness: a LocalCluster
to observe and one way to wait for a condition. Not shipped in the wheel
(tests/package/test_wheel.py)."""

from __future__ import annotations

from .cluster import LocalCluster
from .wait import wait_until, wait_until_async

__all__ = ["LocalCluster", "wait_until", "wait_until_async"]
