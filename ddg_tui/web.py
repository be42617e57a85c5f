"""`ddg-console --web`: the same console in a browser, served by textual-serve.

textual-serve runs one console process per browser tab (per websocket). Here that process is
`python -m ddg_tui --served-by PID` (this program again), started under a guard
(ddg.ops.lifeline, through ddg.ops.job.spawn_bound) so that it and everything it starts (with
--demo: its own Redis and nodes) make one tree that ends with the tab, whatever ends it:

- the tab closes, or the browser goes without a word (killed, or a headless screenshot that
  exits): the console is told to quit (it stops its demo as on `q`) and the guard sends
  SIGTERM to the whole tree at once, SIGKILL TERM_GRACE s later; this server waits for the
  guard, which ends only once the tree has;
- this server is told to stop (SIGTERM, Ctrl-C): every tab is ended so, at once;
- this server dies however it dies (SIGKILL included): each guard sees its socket close and
  SIGKILLs its tree (the demo's temp dir is then removed by the next demo).

The options the server was given reach each tab's console in its environment
(SERVED_ARGV_ENV, read and removed by the console), never on its command line: a
--cluster-secret or a password in --redis-url does not show in `ps`. Every process of a tab
also carries TAB_MARKER=<this server's pid> in its environment (tests find them by it).

Bound to 127.0.0.1 unless told otherwise: anyone who reaches the page can kill, stop and
remove nodes, and there is no login.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import sys
from asyncio.subprocess import Process
from collections.abc import Sequence

from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from ddg.ops.job import GUARD, Guarded, spawn_bound

from .config import SERVED_ARGV_ENV

log = logging.getLogger("ddg.console.web")

TITLE = "DuckDuckGoose console"
TAB_MARKER = "DDG_CONSOLE_SERVER"  # in each tab's environment: this server's pid
# A tab's end, well within 2 s: the console is told to quit and its whole tree gets SIGTERM at
# once (the demo is going: its nodes owe nobody a hand-over), SIGKILL TERM_GRACE s later.
TERM_GRACE = 1.0
OUTPUT_GRACE = 0.5  # s for the tab's last output once its processes are gone
# A browser that vanished without closing its connection (a network cut: no FIN, no RST) is
# noticed when a ping goes unanswered for HEARTBEAT / 2 s (textual-serve's HEARTBEAT is 15 s).
# A killed browser or a finished headless screenshot closes its connection: noticed at once.
HEARTBEAT = 10.0
WS_CLOSE_TIMEOUT = 0.5  # s for a browser to answer our close (the server is stopping)

# textual-serve's page takes its terminal font ("Roboto Mono") from a stylesheet on another host
# (Google Fonts), though the same font ships in its static dir. That link is replaced by a rule
# for the shipped font: the page then looks the same offline, and a browser showing the console
# reaches nothing but this server.
_EXTERNAL_STYLESHEET = re.compile(
    r'<link\s+rel="stylesheet"\s+href="https?://fonts\.googleapis\.com/[^"]*"\s*/?>')
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_FONT_FACE = """<style>
      @font-face {{ font-family: "Roboto Mono"; font-style: normal; font-weight: 100 700;
                   src: url("{static}fonts/RobotoMono-VariableFont_wght.ttf"); }}
      @font-face {{ font-family: "Roboto Mono"; font-style: italic; font-weight: 100 700;
                   src: url("{static}fonts/RobotoMono-Italic-VariableFont_wght.ttf"); }}
    </style>"""


def is_loopback(host: str) -> bool:
    """Whether HOST is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tab_command(server_pid: int) -> list[str]:
    """What runs for each tab (under its guard): this console, told it serves a tab. The
    options come by the environment (tab_environment)."""
    return [sys.executable, "-m", "ddg_tui", "--served-by", str(server_pid)]


def tab_environment(base: dict[str, str], argv: Sequence[str], server_pid: int) -> dict[str, str]:
    """BASE (textual-serve's environment for a tab) with ARGV, the server's options, and the
    marker."""
    return {**base, SERVED_ARGV_ENV: json.dumps(list(argv)), TAB_MARKER: str(server_pid)}


class TabConsole(AppService):
    """textual-serve's AppService, but the console runs under a guard (ddg.ops.lifeline), and
    stop() ends its whole tree within TERM_GRACE s and a SIGKILL (see the module's doc)."""

    def __init__(self, argv: Sequence[str], **kw: object) -> None:
        super().__init__("ddg-console (tab)", **kw)  # type: ignore[arg-type]
        self.argv = list(argv)
        self.guarded: Guarded | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def _open_app_process(self, width: int = 80, height: int = 24) -> Process:
        server = os.getpid()
        env = tab_environment(self._build_environment(width=width, height=height), self.argv,
                              server)
        guard, chan = await spawn_bound(GUARD, ("--", *tab_command(server)), env=env,
                                        pipes=True)
        self.guarded = Guarded(guard, chan, "the tab's console")
        self._process = guard
        assert guard.stdin is not None
        self._stdin = guard.stdin
        await self.guarded.started()  # OSError if the console cannot start: stop() reaps
        return guard

    async def on_data(self, payload: bytes) -> None:
        """To the browser; once its websocket is closed, dropped: the console's output is
        still read (a console blocked on a full pipe could not quit)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.remote_write_bytes(payload)

    async def stop(self) -> None:
        """End the tab: its console, and all it started. Idempotent, and not interrupted by a
        cancellation (the server's shutdown cancels the websocket handlers)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        guarded = self.guarded
        if guarded is None:
            return
        await self._download_manager.cancel_app_downloads(app_service_id=self.app_service_id)
        try:  # a wedged console with a full stdin pipe must not hold back its SIGTERM
            async with asyncio.timeout(0.2):
                await self.send_meta({"type": "quit"})
        except (TimeoutError, OSError):
            pass
        guarded.terminate()
        if not await _ended(guarded, TERM_GRACE):
            log.warning("the processes of a closed tab (console pid %s) still ran %g s after "
                        "SIGTERM: SIGKILL", guarded.pid, TERM_GRACE)
        await guarded.reap()  # SIGKILL to what is left; returns once the guard has ended
        task, self._task = self._task, None
        if task is not None:  # the output ends with the last process that held it
            try:
                async with asyncio.timeout(OUTPUT_GRACE):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()


async def _ended(guarded: Guarded, timeout: float) -> bool:  # noqa: ASYNC109
    """Whether the guard (and so every process of its tree) ends within TIMEOUT s."""
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(guarded.guard.wait())
    except TimeoutError:
        return False
    return True


class ConsoleServer(Server):
    """textual-serve's Server, with no outside stylesheet, each tab's console a TabConsole, no
    command line in its banner, and a shutdown that ends every tab's tree first."""

    def __init__(self, argv: Sequence[str], *, host: str, port: int,
                 public_url: str | None = None) -> None:
        super().__init__("ddg-console", host=host, port=port, title=TITLE,
                         public_url=public_url)
        self.argv = list(argv)
        self._sessions: set[asyncio.Task[object]] = set()
        # Without a public URL, the page addresses the server as the browser did (served on
        # 0.0.0.0, http://0.0.0.0:PORT in the page would not reach it from another machine).
        self._as_requested = public_url is None

    async def on_startup(self, app: web.Application) -> None:
        """serve() has said where it serves: textual-serve's banner would add the command."""

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        response = await super().handle_index(request)
        if isinstance(response, web.Response) and response.text is not None:
            static = f"{self.public_url}{request.app.router['static'].url_for(filename='/')}"
            font_face = _FONT_FACE.format(static=static.rstrip("/") + "/")
            text = _EXTERNAL_STYLESHEET.sub(lambda _m: font_face, response.text)
            if self._as_requested and _HOST.fullmatch(request.host or ""):
                here = self.public_url.split("://", 1)[1]
                text = (text.replace(f"http://{here}/", f"http://{request.host}/")
                        .replace(f"ws://{here}/", f"ws://{request.host}/"))
            response.text = text
        return response

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """textual-serve's, with a TabConsole, a shorter heartbeat, and the tab ended (bounded)
        however the websocket ends."""
        task = asyncio.current_task()
        websocket = web.WebSocketResponse(heartbeat=HEARTBEAT, timeout=WS_CLOSE_TIMEOUT)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        tab: TabConsole | None = None
        if task is not None:
            self._sessions.add(task)
        try:
            await websocket.prepare(request)
            tab = TabConsole(self.argv, write_bytes=websocket.send_bytes,
                             write_str=websocket.send_str, close=websocket.close,
                             download_manager=self.download_manager, debug=self.debug)
            await tab.start(width, height)
            await self._process_messages(websocket, tab)
        except asyncio.CancelledError:  # the server stops
            pass
        except Exception:
            log.exception("a browser tab's connection failed")
        finally:
            try:
                await asyncio.gather(*([tab.stop()] if tab is not None else []),
                                     websocket.close(), return_exceptions=True)
            finally:
                if task is not None:
                    self._sessions.discard(task)
        return websocket

    async def on_shutdown(self, app: web.Application) -> None:
        """End every tab (each handler ends its tab as it unwinds), all at once."""
        sessions = list(self._sessions)
        for session in sessions:
            session.cancel()
        if sessions:
            await asyncio.gather(*sessions, return_exceptions=True)


def serve(argv: Sequence[str], *, host: str, port: int, public_url: str | None = None) -> int:
    """Serve the console with ARGV on HOST:PORT until SIGINT/SIGTERM; returns the exit code."""
    prog = "ddg-console"
    if not is_loopback(host):
        print(f"{prog}: warning: serving on {host}:{port}, beyond this machine: anyone who can "
              "reach it can kill, stop and remove nodes, and there is no login", file=sys.stderr)
    server = ConsoleServer(argv, host=host, port=port, public_url=public_url)
    print(f"{prog}: serving the console on {server.public_url} (each browser tab runs its own "
          "console; with --demo, its own demo cluster: all stopped within 2 s of the tab "
          "closing; Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve()
    except OSError as exc:
        print(f"{prog}: error: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
