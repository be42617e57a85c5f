"""`ddg-console --web`: the same console in a browser, served by textual-serve.

textual-serve runs one console process per browser tab (per websocket), as the command
`served_command()` builds: this program again, with the very options it was given (so
`--web --demo 3` gives each tab its own demo cluster, stopped when the tab closes), plus
`--served-by PID`, which makes that process ignore --web and end cleanly (SIGTERM: its demo is
stopped as on quit) when this server dies, however it dies.

Bound to 127.0.0.1 unless told otherwise: anyone who reaches the page can kill, stop and
remove nodes, and there is no login.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shlex
import sys
from collections.abc import Sequence

from aiohttp import web
from textual_serve.server import Server

TITLE = "DuckDuckGoose console"
# How long a shutting-down server waits for its consoles to quit (each stops its demo first).
SESSION_STOP_TIMEOUT = 30.0

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


def served_command(argv: Sequence[str], server_pid: int) -> str:
    """The shell command textual-serve runs for each browser tab: this console with ARGV (the
    options the server was started with; --web, --host and --port are ignored there), as the
    server's own child (`exec`), bound to it by --served-by."""
    return "exec " + shlex.join([sys.executable, "-m", "ddg_tui", *argv,
                                 "--served-by", str(server_pid)])


class ConsoleServer(Server):
    """textual-serve's Server, with no outside stylesheet and a shutdown that waits for every
    console it started to quit (and so to stop its demo)."""

    def __init__(self, command: str, *, host: str, port: int,
                 public_url: str | None = None) -> None:
        super().__init__(command, host=host, port=port, title=TITLE, public_url=public_url)
        self._sessions: set[asyncio.Task[object]] = set()
        # Without a public URL, the page addresses the server as the browser did (served on
        # 0.0.0.0, http://0.0.0.0:PORT in the page would not reach it from another machine).
        self._as_requested = public_url is None

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
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        try:
            return await super().handle_websocket(request)
        finally:
            if task is not None:
                self._sessions.discard(task)

    async def on_shutdown(self, app: web.Application) -> None:
        """Cancel each session: textual-serve then closes its websocket and tells its console
        to quit, and waits for it to exit."""
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SESSION_STOP_TIMEOUT):
                    await asyncio.gather(*sessions, return_exceptions=True)


def serve(argv: Sequence[str], *, host: str, port: int, public_url: str | None = None) -> int:
    """Serve the console with ARGV on HOST:PORT until SIGINT/SIGTERM; returns the exit code."""
    prog = "ddg-console"
    if not is_loopback(host):
        print(f"{prog}: warning: serving on {host}:{port}, beyond this machine: anyone who can "
              "reach it can kill, stop and remove nodes, and there is no login", file=sys.stderr)
    server = ConsoleServer(served_command(argv, os.getpid()), host=host, port=port,
                           public_url=public_url)
    print(f"{prog}: serving the console on {server.public_url} (each browser tab runs its own "
          "console; with --demo, its own demo cluster, stopped when the tab closes)",
          file=sys.stderr)
    try:
        server.serve()
    except OSError as exc:
        print(f"{prog}: error: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
