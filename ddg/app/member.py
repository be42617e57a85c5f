"""Leader election inside a Python app: `async with member(...) as me` owns one ddg-node
process, and `me.run_as_goose(job)` runs `job(term)` only while that node holds the goose's
lease.

Why a process and not an election in the app's event loop: a loop blocked for two seconds
(a slow call, a garbage collection, a debugger) would keep "being the goose" while the cluster
elects another. The node runs the election beside the app, on its own loop, and dies with the
app however the app dies (the parent-death signal, ddg.local.launcher.spawn_bound).

What the app may believe, and why it is safe: the node reports its remaining lease on
`/status`; the member notes `lease_deadline = t0 + remaining`, where t0 is when it sent the
request (the node read its clock after t0, and the node and the app share CLOCK_MONOTONIC), so
the node's lease surely lasts until then, and the next goose answers `goose` only after it has
ended (docs/design.md). `is_goose` is true only before that deadline; a job started by
`run_as_goose` is driven through a gate (`_Fenced`) that checks the deadline before every
step of the job's coroutine: a step due after the deadline waits for a fresh `/status`, and
gets CancelledError if the node no longer holds the lease of the job's term. So after a frozen
loop resumes, the job never takes another step on a stale lease; it learns of the loss
before any of its code runs. What no in-process check can stop is a step already under way
when the lease ends (a blocking call in the middle of the job), nor a task the job created
unless it is wrapped in `me.fenced(term, ...)`: pass `term`, the fencing token, with every
write (README, "Run something only on the goose").

The watch stream (ddg.client.watch) tells the member of every change at once; the `/status`
poll, every half of the lease's slack while the node is the goose, keeps the deadline fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from ddg.client import NodeClient, NodeStatus, Role, WatchEvent, watch
from ddg.election.names import check_name
from ddg.errors import ConfigError, MemberClosed, MemberError, NodeExited
from ddg.local.launcher import NodeProcess, NodeSpec, split_password
from ddg.node.config import default_data_dir
from ddg.registry.redisconn import check_redis_url
from ddg.util.backoff import Backoff

T = TypeVar("T")

TIMINGS = ("default", "fast")
MIN_POLL = 0.005  # s: the /status poll while goose never runs more often than this
CONFIRM_WAIT = 0.25  # s: a step due after the lease waits this long at most for the node
IDLE_POLL = 0.5  # s: while not goose (the watch stream brings changes; this notices a hang)
LOG_TAIL = 2000  # characters of the node's log quoted when it fails to join


@dataclass(frozen=True, kw_only=True, slots=True)
class MemberConfig:
    """What a member starts its node with. Checked here, so a bad argument is a ConfigError
    before any process starts."""

    name: str
    port: int
    redis_url: str = "redis://127.0.0.1:6379/0"
    cluster: str = "ddg"
    host: str = "127.0.0.1"
    data_dir: Path | None = None  # default: ddg-node's ($XDG_STATE_HOME/ddg/CLUSTER/NAME)
    bootstrap: bool = False  # create the cluster if Redis holds none (the first member, once)
    secret: str | None = field(default=None, repr=False)  # the cluster secret: by environment
    timing: str | None = None  # "default" or "fast"; None: the cluster's
    join_timeout: float = 30.0  # s: joined by then, or the member raises
    log_path: Path | None = None  # the node's output; default: NAME.log beside the data dir
    node_args: tuple[str, ...] = ()  # more ddg-node flags (never a secret: they are in `ps`)

    def __post_init__(self) -> None:
        check_name("member name", self.name)
        check_name("cluster name", self.cluster)
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 0 < self.port < 65536:
            raise ConfigError(f"member {self.name}: port must be an int in 1-65535, "
                              f"got {self.port!r}")
        check_redis_url(self.redis_url)
        if self.timing is not None and self.timing not in TIMINGS:
            raise ConfigError(f"member {self.name}: timing must be one of {', '.join(TIMINGS)} "
                              f"or None, got {self.timing!r}")
        if not isinstance(self.join_timeout, int | float) or not self.join_timeout > 0:
            raise ConfigError(f"member {self.name}: join_timeout must be a positive number of "
                              f"seconds, got {self.join_timeout!r}")
        if self.secret == "":
            raise ConfigError(f"member {self.name}: the cluster secret is empty")
        if isinstance(self.node_args, str):
            raise ConfigError(f"member {self.name}: node_args is a tuple of arguments, "
                              "not a string")

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    def spec(self) -> tuple[NodeSpec, tuple[tuple[str, str], ...]]:
        """The node's spec, and the environment that carries what must not be in `ps`: the
        Redis URL's password goes by DDG_REDIS_PASSWORD, the cluster secret by
        DDG_CLUSTER_SECRET (NodeProcess sets it from the spec)."""
        url, password = split_password(self.redis_url)
        env: tuple[tuple[str, str], ...] = ()
        if password is not None:
            env = (("DDG_REDIS_PASSWORD", password),)
        args = self.node_args
        if self.timing is not None:
            args = ("--timing", self.timing, *args)
        data_dir = self.data_dir or default_data_dir(self.cluster, self.name)
        return NodeSpec(name=self.name, port=self.port, redis_url=url, cluster=self.cluster,
                        data_dir=data_dir, host=self.host, secret=self.secret,
                        bootstrap=self.bootstrap, extra_args=args, env=env), env


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One change of what the member's node says: its role, its term, or whom it follows."""

    role: Role
    term: int
    goose: str | None  # the goose it follows or is; None when it knows of none

    @property
    def is_goose(self) -> bool:
        return self.role is Role.GOOSE


class Member:
    """A member of a cluster, in this app. Made by `member(...)`; see the module docstring."""

    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        self.name = config.name
        self.address = config.address
        spec, _ = config.spec()
        log = config.log_path or spec.data_dir.parent / f"{config.name}.log"
        self.node = NodeProcess(spec, log_path=log, die_with_parent=True)
        self._client = NodeClient(timeout=1.0)
        self._role = Role.DUCK
        self._term = 0
        self._goose: str | None = None
        # The node's lease surely lasts until _deadline (monotonic) in term _deadline_term.
        self._deadline = 0.0
        self._deadline_term = -1
        self._cleared = 0  # how often something said the lease is gone (see _take_status)
        self._poll_every = IDLE_POLL
        self._error: MemberError | None = None
        self._changed = asyncio.Event()
        self._subscribers: list[asyncio.Queue[Change | MemberError]] = []
        self._refreshing: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._jobs: set[asyncio.Task[None]] = set()

    # ---- what the app reads ------------------------------------------------------------------

    @property
    def is_goose(self) -> bool:
        """True only while the node's lease surely holds (read against the clock now)."""
        return self.holds(self._term)

    @property
    def term(self) -> int:
        """The node's term as last heard: the fencing token while it is the goose."""
        return self._term

    @property
    def goose(self) -> str | None:
        """The goose the node follows or is, as last heard."""
        return self._goose

    @property
    def lease_deadline(self) -> float | None:
        """While the goose: the time.monotonic() until which its lease surely holds."""
        return self._deadline if self.is_goose else None

    @property
    def node_pid(self) -> int | None:
        return self.node.pid

    def holds(self, term: int) -> bool:
        """The node holds the lease of TERM right now (against the clock, no I/O)."""
        return (self._error is None and self._deadline_term == term
                and time.monotonic() < self._deadline)

    # ---- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the node and wait until it has joined; MemberError (with the node's last
        words) if it exits first or does not join within join_timeout."""
        await asyncio.to_thread(self.node.start)
        deadline = time.monotonic() + self.config.join_timeout
        try:
            while True:
                if not self.node.running:
                    raise MemberError(f"member {self.name}: its node exited with code "
                                      f"{self.node.returncode} before joining: "
                                      f"{self._log_tail()}")
                sent, cleared = time.monotonic(), self._cleared
                reply = await self._client.poll(self.address)
                if reply.status is not None and reply.status.state not in ("starting",
                                                                            "joining"):
                    self._take_status(reply.status, sent, cleared)
                    break
                if time.monotonic() >= deadline:
                    why = (reply.status.joining if reply.status is not None else reply.error)
                    raise MemberError(f"member {self.name}: its node did not join within "
                                      f"{self.config.join_timeout} s ({why}): "
                                      f"{self._log_tail()}")
                await asyncio.sleep(0.05)
        except BaseException:
            await self.close()
            raise
        self._tasks = [asyncio.create_task(self._watch(), name=f"ddg-member-{self.name}-watch"),
                       asyncio.create_task(self._poll(), name=f"ddg-member-{self.name}-poll")]

    async def close(self) -> None:
        """Stop the node gracefully (a goose hands over first); it stays a member."""
        self._fail(MemberClosed(f"member {self.name} is closed"))
        # Jobs end before the node stops: a goose's hand-over lets the next goose start at
        # once, and it must not find this one's job still running.
        await asyncio.gather(*self._jobs, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._client.aclose()
        await asyncio.to_thread(self.node.stop)

    def _log_tail(self) -> str:
        path = self.node.log_path
        try:
            text = path.read_text(errors="replace") if path is not None else ""
        except OSError:
            text = ""
        tail = text[-LOG_TAIL:].strip()
        return f"its log ({path}) ends:\n{tail}" if tail else f"see {path}"

    # ---- keeping up with the node --------------------------------------------------------------

    def _fail(self, error: MemberError) -> None:
        if self._error is not None:
            return
        self._error = error
        self._clear()
        for job in self._jobs:
            job.cancel()
        self._notify(error)

    def _notify(self, item: Change | MemberError) -> None:
        for queue in self._subscribers:
            queue.put_nowait(item)
        self._changed.set()
        self._changed = asyncio.Event()

    def _learn(self, role: Role, term: int, goose: str | None) -> None:
        """What a watch event or a status says. Never extends the deadline (only a fresh
        /status does), but ends it as soon as anything says the lease is gone."""
        if term < self._term:
            return  # older than what a /status already said
        if role is not Role.GOOSE or term != self._deadline_term:
            self._clear()
        if (role, term, goose) != (self._role, self._term, self._goose):
            self._role, self._term, self._goose = role, term, goose
            self._notify(Change(role=role, term=term, goose=goose))

    def _clear(self) -> None:
        self._deadline = 0.0
        self._cleared += 1

    def _take_status(self, status: NodeStatus, sent: float, cleared: int) -> None:
        """A /status sent at SENT (monotonic) when _cleared was CLEARED. A status that crossed
        a newer "the lease is gone" (a hand-over, say) on the way does not renew the lease."""
        remaining = status.lease_remaining_ms
        if status.role is Role.GOOSE and remaining is not None and status.term >= self._term \
                and cleared == self._cleared:
            # 1 ms for /status's rounding to 0.1 ms and the float in between.
            self._deadline = sent + max(0.0, remaining - 1.0) / 1000
            self._deadline_term = status.term
        timing = status.timing
        slack = (timing.lease_ms - timing.heartbeat_ms) / 2000
        self._poll_every = max(MIN_POLL, slack) if status.role is Role.GOOSE else IDLE_POLL
        self._learn(status.role, status.term, status.goose)

    async def _refresh(self) -> None:
        """One /status at a time (so that answers are taken in order): a request under way is
        shared. A node that is gone fails the member."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh_once())
            self._refreshing.add_done_callback(lambda _f: setattr(self, "_refreshing", None))
        await asyncio.shield(self._refreshing)

    async def _refresh_once(self) -> None:
        sent, cleared = time.monotonic(), self._cleared
        reply = await self._client.poll(self.address)
        if reply.status is not None:
            self._take_status(reply.status, sent, cleared)
        elif not self.node.running:
            self._fail(NodeExited(f"member {self.name}: its node exited with code "
                                  f"{self.node.returncode}"))

    async def _confirm(self, term: int) -> bool:
        """Whether the node still holds TERM's lease, after a fresh /status if the deadline
        has passed. Concurrent callers share one request."""
        if self.holds(term):
            return True
        if self._error is not None or term < self._term:
            return False
        # A node that does not answer within CONFIRM_WAIT after its lease (stopped, starved)
        # is not the goose as far as the app can tell: cancel now, not at the poll's timeout.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONFIRM_WAIT):
                await self._refresh()
        return self.holds(term)

    async def _poll(self) -> None:
        while self._error is None:
            await self._refresh()
            if self._role is Role.GOOSE:
                await asyncio.sleep(self._poll_every)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL):
                        await self._changed.wait()

    async def _watch(self) -> None:
        def retry(_reason: str, _delay: float) -> None:
            self._clear()  # the stream broke: believe nothing until a fresh /status
            if not self.node.running:
                self._fail(NodeExited(f"member {self.name}: its node exited with code "
                                      f"{self.node.returncode}"))
            if self._error is not None:
                raise self._error  # ends the stream: nothing more to follow

        events = watch(self.address, backoff=Backoff(initial=0.02, maximum=0.5), on_retry=retry)
        async with contextlib.aclosing(events):
            event: WatchEvent
            async for event in events:
                if self._error is not None:
                    return
                self._learn(event.role, event.term, event.goose)

    # ---- what the app calls ------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def wait_goose(self) -> int:
        """Wait until the node holds the goose's lease; its term."""
        while True:
            self._check()
            if self._role is Role.GOOSE and await self._confirm(self._term):
                return self._term
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL):
                    await self._changed.wait()

    async def _wait_lost(self, term: int) -> None:
        """Return once the node may not hold TERM's lease any more."""
        while True:
            if self._error is not None or not await self._confirm(term):
                return
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(_loop_time(self._deadline)):
                    await changed.wait()

    async def run_as_goose(self, job: Callable[[int], Awaitable[object]]) -> None:
        """Run `await job(term)` each time the node becomes the goose; cancel it (CancelledError
        inside the job) the moment the node may have lost the lease. A job that returns by
        itself is not started again in the same term. Returns never: raises the job's
        exception, or MemberError when the member ends (its node exited, or it was closed)."""
        if not callable(job):
            raise ConfigError(f"run_as_goose needs a callable job(term), got {job!r}")
        while True:
            term = await self.wait_goose()
            task = asyncio.create_task(self._fenced(job, term), name=f"ddg-job-term-{term}")
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)
            lost = asyncio.create_task(self._wait_lost(term))
            try:
                await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
                elif not task.cancelled() and task.exception() is None:
                    await lost  # the job returned by itself: wait for the term to end
            finally:
                task.cancel()
                lost.cancel()
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
            self._check()

    async def _fenced(self, job: Callable[[int], Awaitable[object]], term: int) -> None:
        awaitable = job(term)
        if not asyncio.iscoroutine(awaitable):
            raise ConfigError(f"run_as_goose needs an async job(term); it returned "
                              f"{awaitable!r}")
        await _Fenced(awaitable, self, term)

    def fenced(self, term: int, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """CORO, each of whose steps is checked against TERM's lease as a job's are: for the
        tasks a job creates (`tasks.create_task(me.fenced(term, flush()))`)."""
        if not asyncio.iscoroutine(coro):
            raise ConfigError(f"fenced needs a coroutine, got {coro!r}")
        return _Fenced(coro, self, term)

    async def changes(self) -> AsyncGenerator[Change, None]:
        """The node's changes, from now on, each once, in order: first the state now. Ends
        with the member's MemberError."""
        queue: asyncio.Queue[Change | MemberError] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            self._check()
            yield Change(role=self._role, term=self._term, goose=self._goose)
            while True:
                item = await queue.get()
                if isinstance(item, MemberError):
                    raise item
                yield item
        finally:
            self._subscribers.remove(queue)


def _loop_time(monotonic: float) -> float:
    """A time.monotonic() reading on the running loop's clock (the same clock by default)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic - time.monotonic())


class _Fenced(Generic[T]):
    """Drives a job's coroutine and checks the lease before each of its steps: a step due
    after the deadline waits for a fresh /status and, if the lease is gone, gets
    CancelledError instead of running. A cancellation from outside goes through at once."""

    __slots__ = ("_coro", "_member", "_term")

    def __init__(self, coro: Coroutine[Any, Any, T], member: Member, term: int) -> None:
        self._coro = coro
        self._member = member
        self._term = term

    def __await__(self) -> Generator[Any, Any, T]:
        coro, member, term = self._coro, self._member, self._term
        value: Any = None
        error: BaseException | None = None
        while True:
            if error is None and not member.holds(term):
                try:
                    held = yield from member._confirm(term).__await__()
                except BaseException as exc:  # cancelled while confirming: pass it on
                    error, held = exc, True
                if not held:
                    error = asyncio.CancelledError(f"not the goose of term {term} any more")
            try:
                step = coro.throw(error) if error is not None else coro.send(value)
            except StopIteration as done:
                return cast(T, done.value)
            value, error = None, None
            try:
                value = yield step
            except BaseException as exc:
                error = exc


@contextlib.asynccontextmanager
async def member(*, name: str, port: int, redis_url: str = "redis://127.0.0.1:6379/0",
                 cluster: str = "ddg", host: str = "127.0.0.1", data_dir: Path | None = None,
                 bootstrap: bool = False, secret: str | None = None, timing: str | None = None,
                 join_timeout: float = 30.0, log_path: Path | None = None,
                 node_args: tuple[str, ...] = ()) -> AsyncIterator[Member]:
    """Join the cluster as NAME with a ddg-node on PORT that this process owns; leave the
    block to stop it (gracefully: a goose hands over). Raises ConfigError for bad arguments,
    MemberError if the node cannot join. The secret and a Redis password reach the node by
    its environment, never its command line. The node dies with this process."""
    config = MemberConfig(name=name, port=port, redis_url=redis_url, cluster=cluster, host=host,
                          data_dir=data_dir, bootstrap=bootstrap, secret=secret, timing=timing,
                          join_timeout=join_timeout, log_path=log_path, node_args=node_args)
    me = Member(config)
    await me.start()
    try:
        yield me
    finally:
        await me.close()
