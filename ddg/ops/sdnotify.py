"""systemd's notify protocol (sd_notify(3)): READY=1 once the node serves and has joined,
STATUS= lines saying what it waits for or what it is, WATCHDOG=1 pings from the event loop (a
loop stalled past WatchdogSec= sends none, so systemd restarts the node), STOPPING=1 when a
stop begins. Ten lines of protocol over a datagram socket: no library (systemd-python needs
libsystemd's headers to build; the `sdnotify` package is unmaintained)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping

from ddg.ops.changes import Change

log = logging.getLogger("ddg.node")

# What systemd hands a service; the node removes them from its environment at start so that
# its --exec job and hooks neither inherit nor speak for it (sd_notify's unset_environment).
ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """One service manager's socket. Sending never raises and never blocks: a manager that is
    gone costs one warning, not the node."""

    def __init__(self, address: str, *, watchdog: float | None = None) -> None:
        if not address or address[0] not in "/@":
            raise ValueError(f"NOTIFY_SOCKET must be a path or an abstract name (@...), "
                             f"not {address!r}")
        self.address = "\0" + address[1:] if address[0] == "@" else address
        self.watchdog = watchdog  # seconds between pings (half of WATCHDOG_USEC), or None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._failed = False
        self.ready = False
        self.stopping = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier | None:
        """None outside systemd (no NOTIFY_SOCKET). Takes the variables out of ENVIRON."""
        env = os.environ if environ is None else environ
        values = {key: env.pop(key, None) for key in ENV}
        address = values["NOTIFY_SOCKET"]
        if not address:
            return None
        watchdog = None
        usec, pid = values["WATCHDOG_USEC"], values["WATCHDOG_PID"]
        if usec and (not pid or pid == str(os.getpid())):
            try:
                watchdog = int(usec) / 2e6
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a number of microseconds: no watchdog "
                            "pings", usec)
            else:
                if watchdog <= 0:
                    watchdog = None
        try:
            return cls(address, watchdog=watchdog)
        except ValueError as exc:
            log.warning("%s: not notifying the service manager", exc)
            return None

    def send(self, *fields: str) -> None:
        message = "\n".join(fields).encode()
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager at NOTIFY_SOCKET: %s (further "
                            "failures are not logged)", exc.strerror or exc)

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")

    def mark_ready(self, status: str) -> None:
        if not self.ready:
            self.ready = True
            self.send("READY=1", f"STATUS={_one_line(status)}")

    def mark_stopping(self, why: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.send("STOPPING=1", f"STATUS=stopping: {_one_line(why)}")

    def on_change(self, change: Change) -> None:
        """A Changes listener: the status line follows the role (`systemctl status` shows it)."""
        if self.ready and not self.stopping:
            self.status(describe(change))

    async def run_watchdog(self) -> None:
        """Pings from the event loop itself: if the loop stalls, the pings stop."""
        if self.watchdog is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog)

    def close(self) -> None:
        self._sock.close()


def describe(change: Change) -> str:
    v = change.view
    if v.role.value == "goose":
        return f"goose, term {v.term}, {len(v.members)} members"
    if v.goose is not None:
        return f"{v.role.value}, term {v.term}, goose {v.goose}"
    return f"{v.role.value}, term {v.term}, no goose known"


def _one_line(text: str) -> str:
    return " ".join(text.split())
