"""How the console writes durations, uptimes and names: one place, so every panel agrees."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return fmt_uptime(ms / 1000)


def fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort n2 before n10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def summarize_durations(ms: Iterable[float]) -> str:
    """'3 failovers · median 120 ms · max 300 ms' for the history panel."""
    values = sorted(ms)
    if not values:
        return "no failover yet"
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return (f"{n} failover{'s' if n != 1 else ''} · median {fmt_ms(median)} · "
            f"max {fmt_ms(values[-1])}")
