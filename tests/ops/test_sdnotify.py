"""systemd's notify protocol, with a datagram socket standing in for systemd (no systemd runs
here): READY=1 only once the node has joined, STATUS= lines while it waits and as its role
changes, WATCHDOG=1 pings from the event loop that stop while the loop is frozen, STOPPING=1
on SIGTERM. The deploy guide's unit (Type=notify, WatchdogSec=) is checked by
`systemd-analyze verify` in tests/docs/test_deploy_doc.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ddg.ops.sdnotify import Notifier
from ddg_testkit import LocalCluster

Make = Callable[..., LocalCluster]


class Manager:
    """What systemd does with NOTIFY_SOCKET: receives datagrams; each kept with its arrival
    time (monotonic)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: queue.Queue[tuple[float, dict[str, str]]] = queue.Queue()
        self.seen: list[tuple[float, dict[str, str]]] = []
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.got.put((time.monotonic(), fields))

    def next(self, pred: Callable[[dict[str, str]], bool], *, timeout: float,
             what: str) -> tuple[float, dict[str, str]]:
        """The next message PRED accepts; every message read is kept in SEEN."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {self.seen}")
            try:
                item = self.got.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(item)
            if pred(item[1]):
                return item

    def close(self) -> None:
        self._open = False
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(tmp_path / "notify.sock")
    yield m
    m.close()


# ---- the protocol, in process -------------------------------------------------------------

def test_the_environment_is_taken_so_jobs_and_hooks_do_not_speak_for_the_node() -> None:
    env = {"NOTIFY_SOCKET": "@ddg-test", "WATCHDOG_USEC": "3000000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = Notifier.from_environ(env)
    assert n is not None and n.address == "\0ddg-test" and n.watchdog == pytest.approx(1.5)
    assert env == {"PATH": "/bin"}
    n.close()
    # another process's watchdog (WATCHDOG_PID) is not ours; no socket: not under systemd
    other = Notifier.from_environ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "100",
                                   "WATCHDOG_PID": "1"})
    assert other is not None and other.watchdog is None
    other.close()
    assert Notifier.from_environ({"PATH": "/bin"}) is None


def test_a_bad_socket_or_a_gone_manager_is_one_warning_not_a_crash(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert Notifier.from_environ({"NOTIFY_SOCKET": "relative"}) is None
    assert "NOTIFY_SOCKET must be a path" in caplog.text
    odd = Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"})
    assert odd is not None and odd.watchdog is None
    odd.close()
    assert "WATCHDOG_USEC='soon'" in caplog.text
    caplog.clear()
    gone = Notifier(str(tmp_path / "nobody-listens"))
    gone.mark_ready("up")
    gone.status("still")
    assert len([r for r in caplog.records if "cannot notify" in r.message]) == 1
    gone.close()


def test_watchdog_pings_stop_while_the_event_loop_is_frozen(manager: Manager) -> None:
    n = Notifier(str(manager.path), watchdog=0.05)

    async def received(count: int, what: str) -> None:
        """Until the manager has read COUNT datagrams in all (a condition with a deadline)."""
        deadline = time.monotonic() + 5
        while manager.got.qsize() < count:
            assert time.monotonic() < deadline, f"no {what} within 5 s"
            await asyncio.sleep(0.01)

    async def main() -> None:
        task = asyncio.create_task(n.run_watchdog())
        await received(3, "3 pings")
        frozen_at = time.monotonic()
        # the fault: a loop that does not run (a blocking call, a GC pause)
        time.sleep(0.6)  # noqa: ASYNC251
        thawed_at = time.monotonic()
        await received(manager.got.qsize() + 3, "3 pings after the thaw")
        task.cancel()
        pings = []
        while not manager.got.empty():
            at, fields = manager.got.get_nowait()
            assert fields == {"WATCHDOG": "1"}
            pings.append(at)
        before = [t for t in pings if t < frozen_at]
        during = [t for t in pings if frozen_at + 0.01 < t < thawed_at]
        after = [t for t in pings if t >= thawed_at]
        assert len(before) >= 3 and not during and len(after) >= 3, (before, during, after)

    asyncio.run(main())
    n.close()


# ---- a real ddg-node under a stand-in systemd ---------------------------------------------

@pytest.mark.integration
def test_a_node_is_ready_only_once_joined_pings_and_says_stopping(
        make_cluster: Make, manager: Manager) -> None:
    c = make_cluster()
    c.start(2)
    goose = c.wait_goose()
    assert c.pause_redis()  # the registry does not answer: the new node cannot join yet
    try:
        spec = c.add("n3", env={"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "400000"})
        _, waiting = manager.next(lambda f: "STATUS" in f, timeout=20, what="a STATUS line")
        assert "READY" not in waiting and "joining" in waiting["STATUS"]
        # while the registry is away it stays not ready (and its watchdog pings go on)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            at, fields = manager.next(lambda f: True, timeout=5, what="a ping")
            assert "READY" not in fields, fields
    finally:
        assert c.resume_redis()
    _, ready = manager.next(lambda f: f.get("READY") == "1", timeout=20, what="READY=1")
    st = c.status(spec.name)
    assert st is not None and spec.name in st.members and not st.joining
    assert ready["STATUS"].startswith(("duck", "goose", "candidate"))
    # its role in the status line as it changes
    c.kill(goose)
    def new_goose(f: dict[str, str]) -> bool:
        line = f.get("STATUS", "")
        m = re.match(r"(goose|duck), term \d+(, goose (\S+))?", line)
        return m is not None and (m[1] == "goose" or m[3] not in (None, goose))
    manager.next(new_goose, timeout=20, what="a STATUS line naming the new goose")
    # pings from its loop at half of WATCHDOG_USEC; none while it is frozen
    pings = [manager.next(lambda f: "WATCHDOG" in f, timeout=5, what="a ping")[0]
             for _ in range(4)]
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0
    assert c.pause(spec.name)
    frozen_at = time.monotonic()
    deadline = frozen_at + 1.0
    while (left := deadline - time.monotonic()) > 0:
        try:
            at, fields = manager.got.get(timeout=left)
        except queue.Empty:
            break
        assert at < frozen_at + 0.05 or "WATCHDOG" not in fields, "a frozen node pinged"
    assert c.resume(spec.name)
    manager.next(lambda f: "WATCHDOG" in f, timeout=5, what="a ping after the thaw")
    # SIGTERM: STOPPING=1 first, then a clean exit
    assert c.signal(spec.name, signal.SIGTERM)
    _, stopping = manager.next(lambda f: "STOPPING" in f, timeout=10, what="STOPPING=1")
    assert stopping["STATUS"].startswith("stopping")
    assert c.wait(spec.name, 10) == 0
