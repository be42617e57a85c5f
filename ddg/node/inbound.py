"""Peers' streams into this node (the server side of ddg/node/peers.py's links): one
WebSocket per sender, each frame a signed election message answered on the same stream.

One stream per sender: a newer one ends the older (the peer reconnected; the membership
bounds how many there are). Frames are handled one after another, as they came. A peer that
does not read its replies loses its stream once MAX_UNREAD bytes of them wait to be sent, so
a reply's write never waits (no timer per frame: the cost at rest). At shutdown every stream
is closed, so a stop is never waiting on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, WSMsgType, web

from ddg.node.peers import MAX_FRAME

WRITE_TIMEOUT = 2.0  # s: the handshake's
# Replies not yet taken by the peer: far below the transport's high-water mark (64 KiB), so
# writing one more (a reply is a few hundred bytes) never pauses for the peer to read.
MAX_UNREAD = 16 * 1024
CLOSE_TIMEOUT = 0.5  # s: how long a closing stream waits for the peer's close frame
log = logging.getLogger("ddg.node")

OnFrame = Callable[[bytes], Awaitable[bytes | None]]


class InboundStreams:
    def __init__(self) -> None:
        self._open: dict[str, web.WebSocketResponse] = {}
        self._closing = False
        self._ending: set[asyncio.Task[bool]] = set()  # replaced streams, closing

    @property
    def senders(self) -> list[str]:
        """The peers with a stream into this node now."""
        return sorted(self._open)

    async def serve(self, request: web.Request, sender: str, on_frame: OnFrame
                    ) -> web.StreamResponse:
        """SENDER's stream (the caller checked who it is): each frame to ON_FRAME, each answer
        back, until either side closes it."""
        if self._closing:
            raise web.HTTPServiceUnavailable(reason="node is stopping")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, compress=False,
                                   timeout=CLOSE_TIMEOUT)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await ws.prepare(request)
        except (ConnectionError, TimeoutError) as exc:  # the peer gave up (its own timeout)
            log.debug("stream of %s not opened: %s", sender, str(exc) or type(exc).__name__)
            # (not the half-prepared ws: aiohttp would finish it, and fail loudly)
            return web.json_response({"error": "stream not opened"}, status=503)
        if self._closing:  # the stop began during the handshake: shutdown() did not see it
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node is stopping")
            return ws
        older = self._open.get(sender)
        self._open[sender] = ws
        if older is not None:
            ending = asyncio.ensure_future(older.close(code=WSCloseCode.GOING_AWAY,
                                                       message=b"replaced"))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    break
                answer = await on_frame(msg.data)
                if answer is not None:
                    transport = request.transport
                    if transport is None or transport.get_write_buffer_size() > MAX_UNREAD:
                        log.debug("stream of %s ended: it does not read its replies", sender)
                        break
                    await ws.send_bytes(answer)
        except (ConnectionError, TimeoutError) as exc:
            log.debug("stream of %s ended: %s", sender, str(exc) or type(exc).__name__)
        finally:
            if self._open.get(sender) is ws:
                del self._open[sender]
            with contextlib.suppress(Exception):
                await ws.close()
            log.debug("stream of %s closed", sender)
        return ws

    async def shutdown(self, app: object = None) -> None:
        """Close every stream (the peers reconnect elsewhere, or to this node restarted)."""
        self._closing = True
        await asyncio.gather(*self._ending, *(ws.close(code=WSCloseCode.GOING_AWAY)
                                              for ws in list(self._open.values())),
                             return_exceptions=True)
