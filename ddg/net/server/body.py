"""Request bodies with the deadline and the size cap aiohttp lacks (``read_body``)."""

from __future__ import annotations

import asyncio
import logging
import math

from aiohttp import web

from ddg.net.server.connection import Connection, connection_of

log = logging.getLogger("ddg.server")

# The deadline is a parameter, not the caller's asyncio.timeout(), so that a timeout here is
# told apart from any other: it is the client's fault (408), not the handler's.
async def read_body(
    request: web.BaseRequest, *, limit: int, timeout: float  # noqa: ASYNC109
) -> bytes:
    """Read the whole body within TIMEOUT seconds and LIMIT bytes.

    aiohttp has no body deadline: a client that announces a Content-Length and stalls holds
    the handler forever. Raises web.HTTPRequestTimeout (408) or web.HTTPRequestEntityTooLarge
    (413), after which the connection is closed, and web.HTTPBadRequest when the body is
    malformed or the client went away mid-body (logged at DEBUG only: aiohttp would otherwise
    log the ConnectionResetError as an ERROR with a traceback). All are HTTPExceptions, so an
    errors-as-JSON middleware turns them into JSON replies.
    """
    if limit < 0 or not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"read_body needs limit >= 0 and timeout > 0, got {limit}, {timeout}")
    conn = connection_of(request)
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(conn, limit, declared)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise _too_large(conn, limit, size)
                chunks.append(chunk)
    except TimeoutError:
        if conn is not None:
            conn.stats.body_timeouts += 1
            conn.close_after_response = True
        log.debug("%s: body not received within %g s (%d bytes)", request.remote, timeout, size)
        raise web.HTTPRequestTimeout(
            reason=f"request body not received within {timeout:g} s") from None
    except (ConnectionError, RuntimeError) as exc:
        # aiohttp raises RuntimeError("Connection closed.") when the client is already gone
        transport = request.transport
        if isinstance(exc, RuntimeError) and transport is not None and not transport.is_closing():
            raise
        if conn is not None:
            conn.stats.client_disconnects += 1
        log.debug("%s disconnected after %d bytes of the body of %s %s",
                  request.remote, size, request.method, request.path)
        raise web.HTTPBadRequest(reason="client disconnected mid-body") from None
    except web.RequestPayloadError as exc:  # bad chunked encoding or compression
        log.debug("%s sent a malformed body: %s", request.remote, exc)
        raise web.HTTPBadRequest(reason="malformed request body") from None
    return b"".join(chunks)


def _too_large(conn: Connection | None, limit: int, size: int) -> web.HTTPException:
    if conn is not None:
        conn.stats.bodies_too_large += 1
        conn.close_after_response = True
    return web.HTTPRequestEntityTooLarge(
        max_size=limit, actual_size=size, reason=f"request body over {limit} bytes")
