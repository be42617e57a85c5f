"""Crash hints: each duck holds one idle HTTP stream open to its goose.

When the goose's process dies (SIGKILL, OOM, a segfault) its kernel closes the stream at once,
and the duck reads an end without the goose's goodbye within a millisecond or so: the hint that
lets it campaign without sitting out an election timeout (Election.goose_lost). A goose that
stops being one, or stops gracefully, writes `bye` first. A frozen goose, a lost host or a
dropped link close nothing, and are left to the election timeout as before. A hint can be false
(a firewall's reset looks the same), which costs at most an election, never safety: the new
goose still waits out the old lease (docs/design.md).

The stream carries `hold` at the start, `ping` every PING_INTERVAL (so that a duck that went
away is noticed, and no NAT or firewall forgets an idle connection), and `bye` at the end.

One stream per duck: a newer one ends the older, with `bye` (the duck has left it, or someone
else opened a stream in its name: neither is a crash). Only the duck may open one where peers
authenticate (node.py: signed for this goose with the secret, or a certificate naming the
duck); on an unsigned loopback cluster anyone on the host may, so a live stream of a duck is
replaced at most SUPERSEDE_BURST times at once, then once per SUPERSEDE_EVERY (429 beyond; one
whose client has gone is replaced freely). A flood then costs that duck its hint for a while,
never an election.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from enum import Enum

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from ddg.election.timing import JointTiming, Timing
from ddg.net import auth
from ddg.node.config import PeerConfig
from ddg.util.backoff import Backoff
from ddg.util.ratelimit import LogThrottle, TokenBucket

HELLO = b"hold"  # then the goose's timing (timing_tag), and a newline
PING = b"ping\n"
BYE = b"bye\n"
PING_INTERVAL = 5.0  # seconds; a duck that reads nothing for 3 of these reconnects (no hint)
PATH = "/raft/hold/"  # + the duck's name (signed with the rest of the path)
SUPERSEDE_BURST = 3  # a duck's stream may be replaced this many times at once,
SUPERSEDE_EVERY = 1.0  # then once per this many seconds
REFUSALS = (401, 403, 429)  # said in the duck's log (once a minute): the goose will not hold it
log = logging.getLogger("ddg.hold")


class Ended(Enum):
    BYE = "bye"  # the goose said goodbye: no hint
    LOST = "lost"  # the open stream ended without one: the hint
    FAILED = "failed"  # never opened (refused, timed out, not the goose): no hint


TAG_SEPARATOR = "; "  # between the timings of a joint timing (a change in progress)


def timing_tag(t: Timing | JointTiming) -> str:
    """The timings a node runs on, as the safety argument compares them: during a change,
    each timing of the joint set (docs/design.md, "Timing is cluster state")."""
    if isinstance(t, JointTiming):
        return TAG_SEPARATOR.join(timing_tag(x) for x in t.timings)
    return (f"heartbeat={t.heartbeat_ms} election={t.election_timeout_min_ms}-"
            f"{t.election_timeout_max_ms} lease={t.lease * 1000:g} margin={t.drift_margin:g}")


class HoldServer:
    """The goose's side: streams stay open while this node is goose, then end with `bye`.
    The first line carries its timing, so that a duck can say if theirs share none."""

    def __init__(self, timing: Timing | JointTiming) -> None:
        self._hello = b""
        self.announce(timing)
        self._tenure = asyncio.Event()  # set: this node is not (or no longer) the goose
        self._tenure.set()
        # duck -> (set to end its stream, the stream's request)
        self._streams: dict[str, tuple[asyncio.Event, web.Request]] = {}
        self._replaced: dict[str, TokenBucket] = {}  # duck -> its live stream's replacements
        self._closing = False

    def announce(self, timing: Timing | JointTiming) -> None:
        """The timing the next streams' first line carries (the cluster's changed)."""
        self._hello = HELLO + b" " + timing_tag(timing).encode() + b"\n"

    def became_goose(self) -> None:
        if not self._closing and self._tenure.is_set():
            self._tenure = asyncio.Event()

    def stopped_being_goose(self) -> None:
        self._tenure.set()

    @property
    def open(self) -> int:
        return len(self._streams)

    async def shutdown(self, app: object = None) -> None:
        """Say goodbye on every stream, so a graceful stop is not taken for a crash."""
        self._closing = True
        self._tenure.set()

    async def handle(self, request: web.Request, duck: str, *, is_goose: bool
                     ) -> web.StreamResponse:
        """Stream to DUCK until this node's tenure as goose ends (the caller checked the
        sender), or a newer stream of DUCK's replaces it (at a limited rate: module docstring).
        Either end says `bye`: only a crash ends one without it."""
        tenure = self._tenure
        if not is_goose or tenure.is_set():
            return web.json_response({"error": "not the goose"}, status=409)
        older = self._streams.get(duck)
        if older is not None:
            end, held = older
            if held.transport is not None and not self._may_replace(duck):  # it is live
                return web.json_response(
                    {"error": f"the crash-hint stream of {duck} was replaced too often; "
                              "try again in a second"}, status=429, headers={"Retry-After": "1"})
            end.set()
        resp = web.StreamResponse(headers={"Content-Type": "text/plain",
                                           "Cache-Control": "no-store"})
        superseded = asyncio.Event()
        self._streams[duck] = (superseded, request)
        try:
            async with asyncio.timeout(PING_INTERVAL):
                await resp.prepare(request)
                await resp.write(self._hello)
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PING_INTERVAL):
                        await _first(tenure.wait(), superseded.wait())
                if tenure.is_set() or superseded.is_set():
                    async with asyncio.timeout(PING_INTERVAL):
                        await resp.write(BYE)
                        await resp.write_eof()
                    break
                async with asyncio.timeout(PING_INTERVAL):  # a duck gone for good: ends
                    await resp.write(PING)
        except (ConnectionError, TimeoutError):
            pass  # the duck went away: nothing to say goodbye to
        finally:
            current = self._streams.get(duck)
            if current is not None and current[0] is superseded:
                del self._streams[duck]
        return resp

    def _may_replace(self, duck: str) -> bool:
        """Whether DUCK's live stream may be replaced now (then that counts)."""
        bucket = self._replaced.get(duck)
        if bucket is None:
            bucket = self._replaced[duck] = TokenBucket(SUPERSEDE_BURST, SUPERSEDE_EVERY)
        return bucket.take()


async def _first(*aws: Awaitable[object]) -> None:
    """Wait until the first of AWS is done; cancel the rest."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def hold_once(session: ClientSession, config: PeerConfig, goose: str, address: str,
                    *, on_hello: Callable[[str], None] | None = None,
                    warn: LogThrottle | None = None,
                    connect: float | None = None) -> Ended:
    """Open a stream to GOOSE at ADDRESS and wait for it to end; how it ended. ON_HELLO gets
    the timing the goose announced; WARN says why a goose refuses to hold it; CONNECT bounds
    the opening (default: an election timeout)."""
    path = PATH + config.name
    headers = {}
    if config.secret is not None:
        headers = auth.sign_headers(config.secret, "GET", path, b"", recipient=goose)
    connect = connect or config.timing.election_min
    timeout = ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=None)
    opened = False
    try:
        async with session.get(address + path, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                if warn is not None and resp.status in REFUSALS:
                    reason = (await resp.text())[:300]
                    warn.warning(f"hold:{resp.status}:{goose}", "%s refused this node's "
                                 "crash-hint stream (%d): %s", goose, resp.status, reason)
                return Ended.FAILED
            async with asyncio.timeout(connect):
                hello = await resp.content.readline()
            if not hello.startswith(HELLO) or not hello.endswith(b"\n"):
                return Ended.FAILED
            opened = True
            if on_hello is not None:
                on_hello(hello[len(HELLO):].decode("utf-8", "replace").strip())
            while True:
                try:
                    async with asyncio.timeout(3 * PING_INTERVAL):
                        line = await resp.content.readline()
                except TimeoutError:  # silent, not closed: a lost host or link, not a crash
                    return Ended.FAILED
                if line != PING:
                    return Ended.BYE if line == BYE else Ended.LOST
    except (ClientError, ConnectionError, TimeoutError) as exc:
        log.debug("hold on %s: %s", goose, str(exc) or type(exc).__name__)
        return Ended.LOST if opened else Ended.FAILED


class Holder:
    """The duck's side: keeps a stream open to whichever goose it follows."""

    def __init__(self, *, config: PeerConfig, session: Callable[[], ClientSession | None],
                 address_of: Callable[[str], str | None], blocked: Callable[[str], bool],
                 on_lost: Callable[[str], Awaitable[None]],
                 warn: LogThrottle | None = None) -> None:
        self.config = config
        self._warn = warn
        self._session = session
        self._address_of = address_of
        self._blocked = blocked
        self._on_lost = on_lost
        self._target: str | None = None
        self._changed = asyncio.Event()
        self.timing: Timing | JointTiming = config.timing  # in force; the node sets it
        self._told: set[tuple[str, str]] = set()

    def follow(self, goose: str | None) -> None:
        """The goose this node follows now (None: it follows none)."""
        if goose != self._target:
            self._target = goose
            self._changed.set()

    async def run(self) -> None:
        backoff = Backoff(initial=self.timing.heartbeat, maximum=1.0)
        last: str | None = None
        while True:
            self._changed.clear()
            goose = self._target
            if goose != last:  # a new goose gets a stream at once
                backoff.reset()
                last = goose
            address = None if goose is None else self._address_of(goose)
            session = self._session()
            ended = Ended.FAILED
            if (goose is not None and address is not None and session is not None
                    and not self._blocked(goose)):
                ended = await self._hold(session, goose, address)
            if (ended is Ended.LOST and goose is not None and goose == self._target
                    and not self._blocked(goose)):  # fault injection: the FIN never came
                await self._on_lost(goose)  # the core logs it
            if ended is not Ended.FAILED:
                backoff.reset()
            if self._changed.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                # wait for another goose, or try this one again (it may have been a false hint)
                async with asyncio.timeout(backoff.next() if goose is not None else None):
                    await self._changed.wait()

    def _compare(self, goose: str, theirs: str) -> None:
        """A goose whose timings share none with this node's: the cluster's record cannot do
        that (a node of a version before it can), and the leases can overlap."""
        mine = timing_tag(self.timing)
        if not set(theirs.split(TAG_SEPARATOR)).isdisjoint(mine.split(TAG_SEPARATOR)):
            return
        if (goose, theirs) not in self._told:
            self._told.add((goose, theirs))
            log.error("goose %s runs another timing (%s) than this node (%s), sharing none: "
                      "two geese can overlap; is it a node of a version from before timing "
                      "was cluster state, started with other flags? (docs/design.md)",
                      goose, theirs, mine, extra={"event": "timing_mismatch", "goose": goose})

    async def _hold(self, session: ClientSession, goose: str, address: str) -> Ended:
        """Hold until the stream ends or the goose we follow changes (then: FAILED)."""
        task = asyncio.ensure_future(hold_once(
            session, self.config, goose, address,
            on_hello=lambda theirs: self._compare(goose, theirs), warn=self._warn,
            connect=self.timing.election_min))
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            if not task.done():  # the goose changed, or this loop is being stopped
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return task.result() if not task.cancelled() else Ended.FAILED
