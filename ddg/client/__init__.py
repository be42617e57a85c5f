"""What tools and applications import: NodeClient, status(), watch(), NodeStatus, Role, ...
May import: ddg.net (TLS, signing), ddg.election, ddg.util, ddg.errors, httpx."""

from typing import TYPE_CHECKING, Any

from ddg.client.events import (
    INCARNATION_HEADER,
    SseDecoder,
    SseMessage,
    WatchEvent,
    WatchFormatError,
    parse_event,
)
from ddg.client.nodestatus import (
    ClockInfo,
    NodeStatus,
    RedisInfo,
    StatusFormatError,
    StorageInfo,
    TimingInfo,
)
from ddg.election.roles import Role

if TYPE_CHECKING:
    from ddg.client.http import (
        AdminResult,
        NodeClient,
        NodeUnavailable,
        Reply,
        WatchRefused,
        describe_error,
        status,
        watch,
    )

# The HTTP client's names load on first use (PEP 562): a node imports ddg.client.nodestatus
# and ddg.client.events, which import this package, and must not pay for httpx (~6 MiB RSS).
_HTTP = frozenset({"AdminResult", "NodeClient", "NodeUnavailable", "Reply", "WatchRefused",
                   "describe_error", "status", "watch"})


def __getattr__(name: str) -> Any:
    if name in _HTTP:
        from ddg.client import http
        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "INCARNATION_HEADER", "AdminResult", "ClockInfo", "NodeClient", "NodeStatus",
    "NodeUnavailable", "RedisInfo", "Reply", "Role", "SseDecoder", "SseMessage",
    "StatusFormatError", "StorageInfo", "TimingInfo", "WatchEvent", "WatchFormatError",
    "WatchRefused", "describe_error", "parse_event", "status", "watch",
]
