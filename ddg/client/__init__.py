"""What tools and applications import: NodeClient, status(), watch(), NodeStatus, Role, ...
May import: ddg.net (TLS, signing), ddg.election, ddg.util, ddg.errors, httpx."""

from ddg.client.events import (
    INCARNATION_HEADER,
    SseDecoder,
    SseMessage,
    WatchEvent,
    WatchFormatError,
    parse_event,
)
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
from ddg.client.nodestatus import (
    ClockInfo,
    NodeStatus,
    RedisInfo,
    StatusFormatError,
    StorageInfo,
    TimingInfo,
)
from ddg.election.roles import Role

__all__ = [
    "INCARNATION_HEADER", "AdminResult", "ClockInfo", "NodeClient", "NodeStatus",
    "NodeUnavailable", "RedisInfo", "Reply", "Role", "SseDecoder", "SseMessage",
    "StatusFormatError", "StorageInfo", "TimingInfo", "WatchEvent", "WatchFormatError",
    "WatchRefused", "describe_error", "parse_event", "status", "watch",
]
