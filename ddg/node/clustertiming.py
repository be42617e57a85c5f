"""The node's part in its cluster's timing record (docs/design.md, "Timing is cluster state").

A node runs on the record's joint timing, never on its own flags (explicit flags that disagree with
the cluster's target make it refuse to start). On each registry refresh it reads the record and does
what ddg.election.timing.reconcile says: adopt a newer one, put back what Redis lost, merge a forked
history. It writes what it adopts to its data dir before it confirms it, and confirms only once
every lease it held under the timing before has surely ended (Election.timing_settled). A
confirmation that completes the set of members finalizes the record to its target alone, in the same
script. A cluster made by an older version (no record) gets one from its goose. Nothing here blocks
the election: the core keeps running on what it has while Redis is away. """

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ddg.client.nodestatus import TimingInfo
from ddg.election.timing import JointTiming, Timing, TimingRecord, reconcile
from ddg.errors import RegistryError, StorageError, TimingMismatch
from ddg.node.config import MemberConfig
from ddg.node.storage import DataDir
from ddg.registry.records import TimingState
from ddg.registry.registry import Registry
from ddg.util.ratelimit import LogThrottle

log = logging.getLogger("ddg.timing")

Apply = Callable[[JointTiming], Awaitable[None]]


def refuse(flags: Timing, record: TimingRecord, where: str) -> TimingMismatch:
    """The one line a node with disagreeing timing flags exits with."""
    return TimingMismatch(
        f"this node's timing flags say {flags.label}, but cluster timing {where} is "
        f"{record.target.label} (epoch {record.epoch}): start it without --timing/"
        "--heartbeat-ms/--election-timeout-ms/--lease-ms (DDG_TIMING) to run the cluster's, "
        "or change the cluster's with `ddg-node config set`")


class ClusterTiming:
    """The record this node runs on, and the steps that keep it in line with the registry's.
    The node hands it its core's hooks (APPLY, SETTLED, ...) once the core runs."""

    def __init__(self, *, config: MemberConfig, registry: Registry, data: DataDir,
                 warn: LogThrottle) -> None:
        self.config = config
        self.registry = registry
        self.data = data
        self._warn = warn
        self.record: TimingRecord | None = None  # None: no record yet; the flags' timing runs
        self.cached: TimingRecord | None = None  # the data dir's, read before joining
        self.confirmed: str | None = None  # the fingerprint this process confirmed
        self.waiting_for: tuple[str, ...] = ()  # members that have not confirmed, last read
        self.problem: str | None = None  # the registry's record is unusable
        self.persisted = True  # the record run on is on disk (else it is never confirmed)
        # set by the node once its core runs
        self.apply: Apply | None = None
        self.settled: Callable[[], bool] = lambda: True
        self.settles_at: Callable[[], float] = lambda: -float("inf")
        self.is_goose: Callable[[], bool] = lambda: False
        self._confirming: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._again = False

    # ---- start -------------------------------------------------------------------------

    def check(self, record: TimingRecord | None, where: str = "in Redis") -> None:
        """Explicit flags must name the cluster's target; without flags anything goes."""
        if (record is not None and self.config.timing_explicit
                and self.config.timing.resolved() != record.target):
            raise refuse(self.config.timing, record, where)

    def check_join(self, registry: TimingRecord | None) -> None:
        """Before joining: would the record the node starts on refuse its flags?"""
        record = self._choose(registry)
        self.check(record, "in Redis" if record is registry else "in this node's data dir")

    def _choose(self, joined: TimingRecord | None) -> TimingRecord | None:
        """The record a new process runs on: the newest of the one its join returned and its
        data dir's (the same epoch twice but different: both, as one change)."""
        cached = self.cached
        if cached is not None and (joined is None or cached.epoch > joined.epoch):
            return cached
        if cached is not None and joined is not None and cached.epoch == joined.epoch \
                and cached != joined:
            return joined.merged(cached.timings, joined.epoch)
        return joined

    async def start(self, joined: TimingRecord | None) -> JointTiming:
        """Settle the record a new process runs on (it holds no lease: nothing to wait out)."""
        record = self._choose(joined)
        self.check(record, "in Redis" if record is joined else "in this node's data dir")
        if record is not None and record != self.cached:
            self.persisted = await self._persist(record)
        self.record = record
        if record is None:
            log.info("cluster %r has no timing record (made by an older version): running on "
                     "this node's, %s; its goose writes one", self.config.cluster,
                     self.config.timing.label)
        else:
            log.info("running on cluster timing %s", record.describe(),
                     extra={"event": "timing", "epoch": record.epoch})
        return self.effective

    @property
    def effective(self) -> JointTiming:
        return JointTiming.of(self.running)

    @property
    def running(self) -> tuple[Timing, ...]:
        return self.record.timings if self.record is not None else (self.config.timing,)

    # ---- refresh -------------------------------------------------------------------------

    def refresh_soon(self) -> None:
        """Read the record and take a step, in a task of its own (after each membership
        refresh); one at a time, and once more if asked while one runs."""
        self._again = True
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_loop(), name="timing")
            self._refreshing.add_done_callback(_log_failure)

    async def _refresh_loop(self) -> None:
        while self._again:
            self._again = False
            try:
                await self.refresh()
            except RegistryError as exc:
                # Redis down or its data unusable: the membership sync says so; the core
                # keeps running on the timing it has.
                self._warn.warning("timing-refresh", "cannot read the cluster's timing (%s); "
                                   "running on %s", exc, self.effective.label)
                return

    async def refresh(self) -> None:
        """One step: read the record, then adopt, restore, merge, confirm or finalize."""
        state = await self.registry.read_timing()
        if state.problem is not None:
            if state.problem != self.problem:
                log.error("registry problem: %s; running on %s", state.problem,
                          self.effective.label,
                          extra={"event": "registry_problem", "problem": state.problem})
            self.problem = state.problem
            return
        self.problem = None
        if not state.has_member(self.config.name):
            # Removed (it exits once its watcher has read that), or not back yet after a
            # restore lost its entry: a finalize did not wait for it, so a record that shares
            # no timing with its own is no forked history; it writes nothing.
            return
        mine = self.record
        self.waiting_for = state.waiting_for if state.record == mine and mine is not None \
            and mine.changing else ()
        step = reconcile(mine, state.record, self.running)
        if state.record is None and mine is None:
            if self.is_goose():
                await self._write(state, TimingRecord.first(self.config.timing),
                                  "the cluster had no timing record; wrote this goose's")
            return
        if step.write is not None:
            await self._write(state, step.write, step.why, adopt=step.adopt)
        elif step.adopt is not None:
            await self.adopt(step.adopt)
        elif mine is not None and state.record == mine:
            await self._confirm_step(state, mine)

    async def _write(self, state: TimingState, record: TimingRecord, why: str, *,
                     adopt: TimingRecord | None = None) -> None:
        if not await self.registry.put_timing(state.raw, record, cluster_must_exist=True):
            return  # it changed meanwhile: the next read sees what
        log.warning("%s: wrote timing epoch %d (%s)", why, record.epoch, record.describe(),
                    extra={"event": "timing_restored", "epoch": record.epoch})
        if adopt is not None:
            await self.adopt(adopt)
        elif self.record is None:
            await self.adopt(record)

    async def _confirm_step(self, state: TimingState, mine: TimingRecord) -> None:
        fp = mine.fingerprint
        if self.confirmed != fp:
            if self.settled() and (self._confirming is None or self._confirming.done()):
                await self._confirm(mine)
        elif not state.confirmed_by(self.config.name):
            await self._confirm(mine)  # Redis lost it
        elif mine.changing and not state.waiting_for:
            await self._finalized(*await self.registry.confirm_timing(None, mine, state.raw),
                                  mine)

    async def adopt(self, record: TimingRecord) -> None:
        """Run on RECORD; write it to disk; confirm it once the old leases have ended."""
        old = self.record
        if record == old:
            return
        self.record = record
        self.confirmed = None
        self.persisted = False  # not confirmed before it is on disk
        self.waiting_for = ()
        log.info("cluster timing: %s", record.describe(),
                 extra={"event": "timing", "epoch": record.epoch})
        if self.apply is not None:
            await self.apply(record.joint)
        self.persisted = await self._persist(record)
        if self._confirming is not None:
            self._confirming.cancel()
        self._confirming = asyncio.create_task(self._confirm_later(record),
                                               name="timing-confirm")
        self._confirming.add_done_callback(_log_failure)

    async def _persist(self, record: TimingRecord) -> bool:
        """In a thread, like the term and vote: a slow disk never stalls `GET /`."""
        try:
            await asyncio.to_thread(self.data.save_timing, record)
        except StorageError as exc:
            log.error("%s; not confirming timing epoch %d until it is on disk", exc,
                      record.epoch, extra={"event": "storage_failed"})
            return False
        return True

    async def _confirm_later(self, record: TimingRecord) -> None:
        delay = self.settles_at() - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.record == record and self.settled():
            try:
                await self._confirm(record)
            except RegistryError as exc:
                self._warn.warning("timing-confirm", "cannot confirm timing epoch %d yet (%s); "
                                   "trying again on the next registry read", record.epoch, exc)

    async def _confirm(self, record: TimingRecord) -> None:
        if not self.persisted:
            self.persisted = await self._persist(record)
            if not self.persisted:
                return
        finalized, waiting = await self.registry.confirm_timing(self.config.name, record,
                                                                record.to_json())
        if self.record == record:
            self.confirmed = record.fingerprint
        await self._finalized(finalized, waiting, record)

    async def _finalized(self, finalized: bool, waiting: tuple[str, ...] | None,
                         record: TimingRecord) -> None:
        if waiting is not None and self.record == record:
            self.waiting_for = waiting
        if finalized:
            log.info("every member confirmed timing epoch %d: the change to %s is complete",
                     record.epoch, record.target.label,
                     extra={"event": "timing_finalized", "epoch": record.epoch + 1})

    async def close(self) -> None:
        """Cancel the tasks; wait for them a moment at most (a cancel can be lost inside a
        Redis call, which then ends by its own timeout)."""
        tasks = {t for t in (self._confirming, self._refreshing) if t is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2 * self.registry.timeout)

    # ---- status --------------------------------------------------------------------------

    def info(self, running: Timing | JointTiming | None = None,
             longest_lease: float | None = None) -> TimingInfo:
        """For /status: the timing RUNNING now (default: the record's), the record, the
        change in progress."""
        t = running or self.effective
        rec = self.record
        return TimingInfo(
            heartbeat_ms=_ms(t.heartbeat),
            election_timeout_ms=(round(t.election_min * 1000), round(t.election_max * 1000)),
            lease_ms=round(t.lease * 1000, 1), lease_wait_ms=round(t.lease_wait * 1000, 1),
            longest_lease_ms=round((longest_lease or t.lease) * 1000, 1),
            epoch=None if rec is None else rec.epoch,
            target=(rec.target if rec is not None else self.config.timing).label,
            timings=tuple(x.label for x in self.running),
            confirmed=rec is not None and self.confirmed == rec.fingerprint,
            waiting_for=self.waiting_for,
            source="cluster" if rec is not None else "flags",
            problem=self.problem)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A bug, not Redis trouble: said loudly; the core runs on, on the timing it has."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s task failed", task.get_name(), exc_info=exc)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
