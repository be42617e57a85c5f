"""The node's log lines: the text format people read, or one JSON object per line for a log
pipeline (`--log-format json`).

A JSON line has `ts` (RFC 3339, UTC, milliseconds), `level`, `logger`, `node`, `cluster`,
`event` (a stable name tools match on, e.g. `elected`; `log` for a line that has none), `term`
when known, `msg` (the text line's message) and the event's own fields, which callers pass as
`extra=`. A small Formatter subclass rather than python-json-logger: the defaults (`event`,
`term`, the timestamp format) are ours either way, and that is most of the code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# What every LogRecord has: anything else on a record came in through `extra=`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


def rfc3339(created: float) -> str:
    """2024-05-01T12:00:00.123Z"""
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record. TERM is asked for the node's term when a record has none
    of its own."""

    def __init__(self, *, node: str, cluster: str,
                 term: Callable[[], int | None] = lambda: None) -> None:
        super().__init__()
        self.node = node
        self.cluster = cluster
        self.term = term

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
        out: dict[str, Any] = {
            "ts": rfc3339(record.created), "level": record.levelname.lower(),
            "logger": record.name, "node": self.node, "cluster": self.cluster,
            "event": fields.pop("event", "log"),
        }
        term = fields.pop("term", None)
        if term is None:
            try:
                term = self.term()
            except Exception:  # a log line must never fail for want of a term
                term = None
        if term is not None:
            out["term"] = term
        out["msg"] = record.getMessage()
        for key, value in fields.items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)
