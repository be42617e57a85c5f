"""What the console's keys do to nodes, out of the app: add, kill, stop and start (processes
this console started), remove (from the registry, after a confirmation), isolate and heal
(the node's fault injection). Mixed into ConsoleApp, over its workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ddg.errors import ChangeWaiting, DdgError, NotAMember, RegistryError, RegistryUnavailable

from .fmt import fmt_ms
from .screens import ConfirmScreen
from .source import Fleet
from .workers import Workers


class NodeActions(Workers):
    """The node actions (ConsoleApp's __init__ sets the state below)."""

    fleet: Fleet | None
    stop_timeout: float
    isolated_here: set[str]

    if TYPE_CHECKING:
        def selected(self) -> str | None: ...

        def _can_sign(self) -> bool: ...

    def _owned(self, name: str, verb: str) -> Fleet | None:
        """The fleet if NAME is a process this console started; otherwise say why not."""
        if self.fleet is None or not self.fleet.owns(name):
            where = self.model.members.get(name)
            addr = f" at {where.address}" if where else ""
            self.report(f"cannot {verb} {name}: it was not started by this console "
                        f"({'attached mode' if self.fleet is None else 'external node'}); "
                        f"{verb} it where it runs{addr}", "warning", node=name)
            return None
        return self.fleet

    def action_add(self) -> None:
        if self.fleet is None:
            self.report("adding nodes needs demo mode (ddg-console --demo N); in attached "
                        "mode start one with ddg-node --name NAME --port PORT", "warning")
            return
        try:
            started = self.fleet.add()
        except DdgError as exc:
            self.report(f"add failed: {exc}", "error")
            return
        self.model.note_process(started.name, pid=started.pid, state="running",
                                at=self.clock.monotonic())
        self.report(f"started {started.name} on port {started.port} (pid {started.pid})",
                    "good", node=started.name)

    def action_kill(self) -> None:
        name = self.selected()
        if name is None or (fleet := self._owned(name, "kill")) is None:
            return
        now = self.clock.monotonic()
        pid = fleet.kill(name)
        if pid is None:
            self.report(f"{name} is not running; nothing to kill", "warning", node=name)
            return
        self.model.note_process(name, pid=pid, state="killed", at=now)
        was_goose = self.model.mark_goose_loss(name, f"{name} killed", at=now)
        tail = " — it was the goose" if was_goose else ""
        self.report(f"{name} killed (SIGKILL, pid {pid}){tail}", "warning", node=name)

    def action_stop(self) -> None:
        name = self.selected()
        if name is None or (fleet := self._owned(name, "stop")) is None:
            return
        if not fleet.running(name):
            self.report(f"{name} is not running; nothing to stop", "warning", node=name)
            return
        now = self.clock.monotonic()
        pid = fleet.pid(name)
        self.model.note_process(name, pid=pid, state="stopped", at=now)
        was_goose = self.model.mark_goose_loss(name, f"{name} stopped", at=now)
        tail = " — it was the goose" if was_goose else ""
        self.report(f"stopping {name} (SIGTERM, pid {pid}){tail}", "warning", node=name,
                    notify=False)
        self._stop_in_thread(name, pid, "stopped")

    def _stop_in_thread(self, name: str, pid: int | None, what: str) -> None:
        assert self.fleet is not None
        fleet, timeout, clock = self.fleet, self.stop_timeout, self.clock

        def work() -> None:
            t0 = clock.monotonic()
            try:
                code = fleet.stop(name, timeout)
            except DdgError as exc:
                self.call_from_thread(self.report, f"stop {name} failed: {exc}", "error")
                return
            took = fmt_ms((clock.monotonic() - t0) * 1000)
            forced = " (needed SIGKILL)" if code is not None and code < 0 and code != -15 else ""
            self.call_from_thread(
                self.report, f"{name} {what}: pid {pid} exited with code {code} after "
                f"{took}{forced}", "info", node=name)

        self._run_job(work, thread=True, name=f"stop {name}", group="stop", node=name)

    def action_start(self) -> None:
        name = self.selected()
        if name is None or (fleet := self._owned(name, "start")) is None:
            return
        try:
            started = fleet.start(name)
        except DdgError as exc:
            self.report(f"start {name} failed: {exc}", "warning", node=name)
            return
        self.model.note_process(name, pid=started.pid, state="running",
                                at=self.clock.monotonic())
        self.report(f"started {name} again on port {started.port} (pid {started.pid})", "good",
                    node=name)

    def action_remove(self) -> None:
        name = self.selected()
        if name is None:
            return
        ours = self.fleet is not None and self.fleet.owns(name)
        detail = (f"{name} leaves cluster {self.source.cluster} for good: the others stop "
                  f"counting it for the quorum.")
        if ours:
            detail += " Its process (started here) is stopped too."
        self.push_screen(ConfirmScreen(f"Remove {name} from the registry?", detail, "Remove"),
                         callback=self._make_remove_callback(name))

    def _make_remove_callback(self, name: str) -> Callable[[bool | None], None]:
        def done(yes: bool | None) -> None:
            if yes:
                self._run_job(self._remove(name), name=f"remove {name}", group="remove",
                              node=name)
            else:
                self.report(f"remove {name}: cancelled", "info", node=name, notify=False)
        return done

    async def _remove(self, name: str) -> None:
        now = self.clock.monotonic()
        try:
            version = await self.source.remove(name)
        except NotAMember:
            self.report(f"{name} is not in the registry any more", "warning", node=name)
            return
        except RegistryUnavailable as exc:
            self.report(f"remove {name} failed, Redis unreachable: {exc}", "error", node=name)
            return
        except ChangeWaiting as exc:
            self.report(f"{name} not removed (nothing written): {exc}", "warning", node=name)
            return
        except RegistryError as exc:
            self.report(f"remove {name} failed: {exc}", "error", node=name)
            return
        self.model.mark_goose_loss(name, f"{name} removed", at=now)
        self.report(f"removed {name} from the registry (version {version})", "good", node=name)
        try:
            membership = await self.source.read()
            self.model.apply_membership(membership, at=self.clock.monotonic(),
                                        wall=self.clock.wall())
            self._sync_pollers()
        except RegistryError:
            pass  # the discovery loop will catch up and report Redis trouble
        if self.fleet is not None and self.fleet.owns(name):
            pid = self.fleet.pid(name)
            self.model.note_process(name, pid=pid, state="removed", at=now)
            if self.fleet.running(name):
                self._stop_in_thread(name, pid, "removed")
            self.isolated_here.discard(name)

    def action_isolate(self) -> None:
        name = self.selected()
        if name is None:
            return
        member = self.model.members.get(name)
        if member is None:
            return
        if not self._can_sign():
            self.report(f"cannot isolate {name}: the cluster signs its messages (start this "
                        "console with --cluster-secret) or demands client certificates "
                        "(--tls-cert and --tls-key)", "warning", node=name)
            return
        ok = self.model.last_ok.get(name)
        st = ok.reply.status if ok is not None else None
        peers = set(self.model.members) - {name}
        if name in self.isolated_here or (
                st is not None and peers and peers <= set(st.isolated_from)):
            self.report(f"{name} is already isolated from all peers (h heals)", "info",
                        node=name)
            return
        self._run_job(self._isolate(name, member.address), name=f"isolate {name}",
                      group="admin", node=name)

    async def _isolate(self, name: str, address: str) -> None:
        now = self.clock.monotonic()
        result = await self.source.admin(name, address, "/admin/partition", {"all": True})
        if not result.ok:
            self.report(f"isolate {name} failed: {result.message}", "error", node=name)
            return
        self.isolated_here.add(name)
        was_goose = self.model.mark_goose_loss(name, f"{name} isolated", at=now,
                                               ends_role=False)
        self.report(f"{name} isolated from all peers{' — it was the goose' if was_goose else ''}"
                    " (h heals)", "warning", node=name)

    def action_heal(self) -> None:
        if not self.isolated_here:
            self.report("nothing to heal: this console made no partition", "info")
            return
        self._run_job(self._heal(sorted(self.isolated_here)), name="heal", group="admin")

    async def _heal(self, names: list[str]) -> None:
        targets = [(n, self.model.members[n].address) for n in names if n in self.model.members]
        for n in names:
            if n not in self.model.members:
                self.isolated_here.discard(n)
        results = await asyncio.gather(
            *(self.source.admin(n, addr, "/admin/heal", {}) for n, addr in targets))
        healed = [n for (n, _), r in zip(targets, results, strict=True) if r.ok]
        failed = [(n, r) for (n, _), r in zip(targets, results, strict=True) if not r.ok]
        self.isolated_here.difference_update(healed)
        if healed:
            self.report(f"healed {', '.join(healed)}", "good")
        for n, r in failed:
            self.report(f"heal {n} failed: {r.message}", "error", node=n)
