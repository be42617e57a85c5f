"""`--vip ADDR/PREFIX --vip-dev DEV`: a floating IPv4 address that only the goose holds.

A node with --vip starts a keeper (ddg.ops.vipkeeper) before it joins: the keeper removes a
stale copy of the address, then holds it exactly while this node tells it "goose, lease until
T", and removes it by itself before T (the node frozen, stuck or cut off), when told (a
hand-over, a higher term, a stop) or when the node dies (SIGKILL included). Why a process and
not a hook: a hook runs only when the node's loop runs, and a frozen goose's hook never runs;
the keeper keeps the lease's deadline on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ddg.errors import ConfigError, DdgError
from ddg.ops import vipkeeper
from ddg.ops.job import spawn_bound

log = logging.getLogger("ddg.vip")

KEEPER = (sys.executable, "-I", "-S", vipkeeper.__file__)
START_TIMEOUT = 10.0  # s for the keeper to start and clear a stale copy (a loaded host)
STOP_TIMEOUT = 2.0  # s for it to remove the address and exit when told
CAP_NET_ADMIN = 12  # <linux/capability.h>


@dataclass(frozen=True, kw_only=True, slots=True)
class VipConfig:
    """--vip ADDR/PREFIX on --vip-dev DEV; `arping` names the GARP sender (iputils)."""

    address: str
    device: str
    arping: str = "arping"

    def __post_init__(self) -> None:
        if "/" not in self.address:
            raise ConfigError(f"--vip {self.address!r}: give the prefix too, e.g. "
                              "10.0.0.100/24")
        try:
            iface = ipaddress.ip_interface(self.address)
        except ValueError as exc:
            raise ConfigError(f"--vip {self.address!r}: {exc}") from None
        if not isinstance(iface, ipaddress.IPv4Interface):
            raise ConfigError(f"--vip {self.address!r}: only IPv4 (ARP) is supported")
        if iface.ip == iface.network.network_address or iface.ip.is_multicast \
                or iface.ip.is_unspecified or iface.ip == iface.network.broadcast_address:
            raise ConfigError(f"--vip {self.address!r}: not a host address")
        if not self.device or len(self.device) > 15 or any(c in self.device for c in "/ \0"):
            raise ConfigError(f"--vip-dev {self.device!r}: not an interface name")

    @property
    def ip(self) -> str:
        return str(ipaddress.IPv4Interface(self.address).ip)

    @property
    def prefix(self) -> int:
        return ipaddress.IPv4Interface(self.address).network.prefixlen


def check_host(config: VipConfig) -> str:
    """What --vip needs of this host, checked before the node starts; returns arping's path.
    ConfigError with one line otherwise."""
    if not sys.platform.startswith("linux"):
        raise ConfigError("--vip needs Linux")
    try:
        socket.if_nametoindex(config.device)
    except OSError:
        raise ConfigError(f"--vip-dev {config.device}: no such network interface on this "
                          "host") from None
    if not _has_net_admin():
        raise ConfigError("--vip needs root or CAP_NET_ADMIN (to add and remove the address): "
                          "run as root, or give the process CAP_NET_ADMIN (systemd: "
                          "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)")
    arping = shutil.which(config.arping)
    if arping is None:
        raise ConfigError(f"--vip needs {config.arping} to announce the address: "
                          "apt-get install iputils-arping")
    return arping


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


class Vip:
    """The node's side: `on_lease` (called after every step of the core, never blocks) tells
    the keeper each new lease end; `context` (an aiohttp cleanup context) owns the keeper."""

    def __init__(self, config: VipConfig, *, on_lost: Callable[[], None]) -> None:
        self.config = config
        self.on_lost = on_lost  # the keeper died by itself: the node must stop
        self._chan: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._told: tuple[float, int] | None = None  # last (until, term) said; None: dropped
        self._drops = 0  # "D"s sent to the keeper
        self._dropped = 0  # ... and done, as it told
        self._acked = asyncio.Event()

    def on_lease(self, until: float | None, term: int) -> None:
        """UNTIL: the end of this node's lease as the goose of TERM, or None when it is not
        the goose."""
        told = None if until is None else (until, term)
        if told == self._told or self._chan is None:
            return
        self._told = told
        line = f"{vipkeeper.DROP}\n" if told is None else f"{vipkeeper.HOLD} {until!r} {term}\n"
        try:
            self._chan.send(line.encode())
        except OSError as exc:  # the keeper is gone: the node stops (below)
            log.error("cannot reach the VIP keeper: %s", exc.strerror or exc)
            return
        if told is None:
            self._drops += 1

    async def released(self) -> None:
        """Until the keeper has done every removal it was told of: a hand-over waits for this
        before the new goose may take over, since no lease protects that moment."""
        while self._chan is not None and self._dropped < self._drops:
            self._acked.clear()
            await self._acked.wait()

    async def _read_acks(self, chan: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(chan, 4096):
            self._dropped += data.count(f"{vipkeeper.DROP}\n".encode())
            self._acked.set()

    async def _start(self) -> None:
        arping = check_host(self.config)
        self._proc, ours = await spawn_bound(
            KEEPER, (self.config.ip, str(self.config.prefix), self.config.device, arping))
        self._chan = ours
        loop = asyncio.get_running_loop()
        line = b""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not line.endswith(b"\n"):
                    data = await loop.sock_recv(ours, 4096)
                    if not data:
                        break
                    line += data
        except TimeoutError:
            pass
        what, _, rest = line.decode(errors="replace").strip().partition(" ")
        if what != vipkeeper.READY:
            await self._stop()
            reason = rest.partition(" ")[2] if what == vipkeeper.ERROR else "it did not start"
            raise DdgError(f"--vip {self.config.address} on {self.config.device}: {reason}")
        log.info("VIP %s on %s: the keeper (pid %d) holds it while this node is the goose",
                 self.config.address, self.config.device, self._proc.pid)

    async def _stop(self) -> None:
        """Tell the keeper to remove the address and exit; wait for it, bounded."""
        chan, self._chan = self._chan, None
        if chan is not None:
            with contextlib.suppress(OSError):
                chan.send(f"{vipkeeper.DROP}\n".encode())
                chan.shutdown(socket.SHUT_WR)
        proc = self._proc
        if proc is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                log.error("the VIP keeper (pid %d) did not exit: SIGKILL", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if chan is not None:
            chan.close()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._chan is not None:
            log.critical("the VIP keeper (pid %d) exited (code %d): removing %s from %s and "
                         "stopping, since nothing would remove it at this node's lease end",
                         proc.pid, code, self.config.address, self.config.device)
            self._remove_here()
            self.on_lost()

    def _remove_here(self) -> None:
        """The keeper is gone: remove the address from this process (a blocking call of well
        under a millisecond)."""
        try:
            with vipkeeper.netlink() as sock:
                err = vipkeeper.change(sock, add=False, ip=self.config.ip,
                                       prefix=self.config.prefix,
                                       index=socket.if_nametoindex(self.config.device))
        except OSError as exc:
            err = exc.errno or 0
        if err and err != errno.EADDRNOTAVAIL:
            log.error("cannot remove %s from %s: %s", self.config.address, self.config.device,
                      os.strerror(err))
        elif not err:
            log.warning("removed %s from %s [%s %.6f]", self.config.address,
                        self.config.device, vipkeeper.MONO, time.monotonic())

    async def context(self, app: Any = None) -> AsyncIterator[None]:
        await self._start()
        assert self._proc is not None and self._chan is not None
        tasks = [asyncio.create_task(self._watch(self._proc), name="vip"),
                 asyncio.create_task(self._read_acks(self._chan), name="vip-acks")]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._told = None
            self._acked.set()
            await self._stop()
