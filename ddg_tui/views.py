"""What the header and each table row show, built from the model at one instant (the model
never imports this: views read the model)."""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len

from ddg.client import NodeStatus, Role
from ddg.election.core import quorum_of

from .events import Severity
from .fmt import fmt_ms, natural_key
from .model import ClusterModel

GOOSE = Role.GOOSE
# A node started here that has not answered yet shows as starting for this long, then as not
# answering.
STARTING_GRACE_S = 20.0
STARTING_STATES = ("joining", "starting")


@dataclass(frozen=True, kw_only=True, slots=True)
class RowView:
    """What one table row shows. `role` also takes the console-side states below."""

    name: str
    address: str
    # goose | duck | candidate | starting | unreachable | killed | stopped | exited | pending
    role: str
    term: int | None = None
    follows: str | None = None
    heartbeat_age_ms: float | None = None
    lease_remaining_ms: float | None = None
    latency_ms: float | None = None
    uptime_s: float | None = None
    pid: int | None = None
    pid_owned: bool = False
    state: str = ""
    level: Severity = "info"
    stale: bool = False  # term/follows are the last known values, not a current answer
    isolated_from: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class HeaderView:
    cluster: str
    redis_ok: bool | None
    redis_error: str | None
    members: int
    version: int | None
    quorum: int
    goose: str | None
    term: int | None
    max_term: int | None
    geese: tuple[tuple[str, int], ...]
    answering: int
    leaderless_ms: float | None
    last_goose: str | None
    banner: str | None = None
    banner_level: Severity = "error"
    security: str | None = None  # the nodes' mode: hmac, mtls, insecure-loopback or mixed
    timing: TimingView | None = None  # the cluster's timing, as its newest node reports it


@dataclass(frozen=True, kw_only=True, slots=True)
class TimingView:
    """The cluster's timing: its target, and while a change is in progress what runs beside
    it and which members have not confirmed it yet."""

    epoch: int | None
    target: str
    others: tuple[str, ...] = ()  # the other timings in force (a change in progress)
    waiting_for: tuple[str, ...] = ()

    @property
    def changing(self) -> bool:
        return bool(self.others)


def timing_view(statuses: Iterable[NodeStatus]) -> TimingView | None:
    """From the node that runs the newest record (the goose first among equals: it reads the
    registry like the others, and says whom a change waits for)."""
    best: NodeStatus | None = None
    for st in statuses:
        if st.timing.target is None:
            continue  # a node of a version from before timing records
        key = (st.timing.epoch or 0, st.role == GOOSE)
        if best is None or key > (best.timing.epoch or 0, best.role == GOOSE):
            best = st
    if best is None:
        return None
    t = best.timing
    return TimingView(epoch=t.epoch, target=t.target or "?",
                      others=tuple(x for x in t.timings if x != t.target),
                      waiting_for=t.waiting_for)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def header_view(m: ClusterModel, now: float) -> HeaderView:
    current = m.geese()
    split = m.tracker.split
    answering = sum(1 for n in m.members
                    if (o := m.latest.get(n)) is not None and o.reply.ok)
    terms = [o.reply.status.term for o in m.last_ok.values()
             if o.reply.status is not None]
    leaderless = m.leaderless_ms(now)
    quorum = quorum_of(len(m.members))
    # Members not polled yet may still answer: no quorum only once they could not make one.
    pending = sum(1 for n in m.members if n not in m.latest)
    no_quorum = (f"no quorum: {answering} of {len(m.members)} member"
                 f"{'' if len(m.members) == 1 else 's'} answer, {quorum} needed"
                 if m.members and answering + pending < quorum else None)
    banner: str | None = None
    level: Severity = "error"
    if split:
        who = ", ".join(f"{n} (term {t})" for n, t in split)
        banner = f"TWO GEESE — {who} were goose at the same instant (proven by their leases)"
    elif not current and m.members:
        since = f" for {fmt_ms(leaderless)}" if leaderless is not None else ""
        last = ""
        if m.tracker.goose is not None:
            cause = f"; {m.tracker.loss.cause}" if m.tracker.loss is not None else ""
            last = f" (last: {m.tracker.goose}, term {m.tracker.goose_term}{cause})"
        why = no_quorum or "election in progress"
        banner = f"NO GOOSE{since}{last} — {why}"
    elif no_quorum is not None:
        banner = f"{no_quorum[0].upper()}{no_quorum[1:]} — the goose keeps its role only " \
                 "while its lease lasts"
    election_trouble = banner is not None
    if m.redis_ok is False:
        redis_banner = (f"REDIS UNREACHABLE ({m.redis_error}) — polling the "
                        f"{len(m.members)} last known members")
        banner = f"{banner}   ·   {redis_banner}" if banner else redis_banner
        level = level if election_trouble else "warning"
    elif m.registry_problem is not None:
        redis_banner = (f"REGISTRY PROBLEM ({m.registry_problem}) — polling the "
                        f"{len(m.members)} last known members")
        banner = f"{banner}   ·   {redis_banner}" if banner else redis_banner
        # the nodes keep electing on what they know: a warning unless the election is hurt
        level = level if election_trouble else "warning"
    modes = {o.reply.status.security for o in m.last_ok.values()
             if o.reply.status is not None and o.reply.status.security}
    return HeaderView(
        cluster=m.cluster,
        redis_ok=m.redis_ok,
        redis_error=m.redis_error,
        members=len(m.members),
        version=m.version,
        quorum=quorum,
        goose=current[0][0] if current else None,
        term=current[0][1] if current else None,
        max_term=max(terms) if terms else None,
        geese=split,  # two or more only with proof
        answering=answering,
        leaderless_ms=leaderless,
        last_goose=m.tracker.goose,
        banner=banner,
        banner_level=level,
        security=("mixed" if len(modes) > 1 else next(iter(modes)) if modes else None),
        timing=timing_view(o.reply.status for o in m.last_ok.values()
                           if o.reply.status is not None),
    )


def rows_view(m: ClusterModel, now: float) -> list[RowView]:
    """Every member's row, in the table's order."""
    return [row_view(m, name, now) for name in sorted(m.members, key=natural_key)]


def row_view(m: ClusterModel, name: str, now: float) -> RowView:
    member = m.members[name]
    obs = m.latest.get(name)
    ok = m.last_ok.get(name)
    proc = m.procs.get(name)
    pid = proc.pid if proc is not None else None
    base: dict[str, Any] = {
        "name": name, "address": member.address, "pid": pid,
        "pid_owned": proc is not None,
    }
    if obs is not None and obs.reply.status is not None:
        st = obs.reply.status
        notes: list[str] = []
        level: Severity = "good"
        age = now - obs.at
        if age > m.stale_after:
            notes.append(f"answer is {fmt_ms(age * 1000)} old")
            level = "warning"
        if st.isolated_from:
            peers = "all peers" if set(st.isolated_from) >= (set(m.members) - {name}) \
                else ", ".join(st.isolated_from)
            notes.append(f"ISOLATED from {peers}")
            level = "warning"
        if not st.redis.connected:
            notes.append("no Redis")
            level = "warning"
        if st.redis.problem:
            notes.append(f"registry: {st.redis.problem}")
            level = "warning"
        if m.version is not None and st.membership_version is not None \
                and st.membership_version < m.version:
            notes.append(f"membership v{st.membership_version} < v{m.version}")
        newest = max((o.reply.status.timing.epoch or 0 for o in m.last_ok.values()
                      if o.reply.status is not None), default=0)
        if st.timing.epoch is not None and st.timing.epoch < newest:
            notes.append(f"timing epoch {st.timing.epoch} < {newest}")
        if proc is None and st.pid is not None:
            base["pid"] = st.pid
        role = str(st.role)
        if st.state in STARTING_STATES:
            role = "starting"
            notes.insert(0, f"{st.state}: {st.joining}" if st.joining else st.state)
            level = "info" if level == "good" else level
        return RowView(
            **base, role=role, term=st.term,
            follows=None if st.role == GOOSE else st.goose,
            heartbeat_age_ms=st.heartbeat_age_ms,
            lease_remaining_ms=st.lease_remaining_ms,
            latency_ms=obs.reply.latency_ms, uptime_s=st.uptime_s,
            state="; ".join(notes) or "ok", level=level,
            isolated_from=st.isolated_from,
        )
    last = ok.reply.status if ok is not None else None
    known: dict[str, Any] = {}
    if last is not None:
        known = {"term": last.term, "stale": True,
                 "follows": None if last.role == GOOSE else last.goose}
        if proc is None and last.pid is not None:
            base["pid"] = last.pid
    if obs is None:
        return RowView(**base, **known, role="pending", state="waiting for a first answer",
                       level="info")
    silent_since = m.first_failure.get(name, obs.at)
    if ok is not None:
        silent_since = ok.at
    silent = fmt_ms((now - silent_since) * 1000)
    if proc is not None and proc.state == "running" and (ok is None or ok.at < proc.since) \
            and now - proc.since < STARTING_GRACE_S:
        ago = fmt_ms((now - proc.since) * 1000)
        return RowView(**base, **known, role="starting",
                       state=f"starting: started {ago} ago, no answer yet", level="info")
    if proc is not None and proc.state in ("killed", "stopped", "exited"):
        ago = fmt_ms((now - proc.since) * 1000)
        what = {
            "killed": f"killed here {ago} ago",
            "stopped": f"stopped here {ago} ago",
            "exited": f"process exited{'' if proc.code is None else f' ({proc.code})'} "
                      f"{ago} ago{': ' + proc.detail if proc.detail else ''}",
        }[proc.state]
        if proc.state == "exited" and proc.code is not None and proc.code < 0:
            what = f"killed by {signal_name(-proc.code)} {ago} ago, not from this console"
        return RowView(**base, **known, role=proc.state, state=what,
                       level="error" if proc.state == "exited" else "warning")
    return RowView(**base, **known, role="unreachable",
                   state=f"no answer {silent}: {obs.reply.error}", level="error")


# ---- fitting a line of parts into a width ------------------------------------------------

Seg = tuple[str, str]  # (text, style)


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of a header line, e.g. "quorum 2". DROP 0: always shown; else dropped when the
    line does not fit, 1 first. SHORT: a shorter form, tried before anything is dropped."""

    segs: tuple[Seg, ...]
    short: tuple[Seg, ...] | None = None
    drop: int = 0

    @classmethod
    def of(cls, text: str, style: str = "", *, short: str | None = None,
           drop: int = 0) -> Part:
        return cls(((text, style),), None if short is None else ((short, style),), drop)


def segs_width(segs: Sequence[Seg]) -> int:
    return sum(cell_len(t) for t, _ in segs)


def fit_parts(parts: Sequence[Part], width: int, *, lead: str = "",
              seps: tuple[str, str] = ("  ·  ", " · ")) -> tuple[list[tuple[Seg, ...]], str]:
    """The parts of a line that fit in WIDTH cells, and the separator to join them. Until
    they fit: the narrow separator; then, rank by rank (1 first), the short form of the
    parts of that rank, then without them; last, the short form of the parts never dropped."""
    ranks = sorted({p.drop for p in parts if p.drop})
    # (separator, ranks shortened, ranks dropped), from the whole line to the least of it
    tries: list[tuple[str, set[int], set[int]]] = [(seps[0], set(), set())]
    shortened: set[int] = set()
    dropped: set[int] = set()
    tries.append((seps[1], set(), set()))
    for rank in ranks:
        shortened = shortened | {rank}
        tries.append((seps[1], shortened, set(dropped)))
        dropped = dropped | {rank}
        tries.append((seps[1], shortened, dropped))
    tries.append((seps[1], shortened | {0}, dropped))
    chosen: list[tuple[Seg, ...]] = []
    sep = seps[1]
    for sep, short, gone in tries:
        chosen = [p.short if p.drop in short and p.short is not None else p.segs
                  for p in parts if p.drop not in gone]
        used = cell_len(lead) + sum(segs_width(c) for c in chosen) \
            + cell_len(sep) * max(0, len(chosen) - 1)
        if used <= width:
            break
    return chosen, sep


def header_parts(h: HeaderView, *, mode: str, mode_short: str, location: str,
                 poll: str, poll_short: str) -> tuple[list[Part], list[Part]]:
    """The header's two lines, as parts to fit into the terminal's width."""
    one = [Part.of(" DuckDuckGoose ", "bold black on #ffd200", short=" DDG "),
           Part.of(f"cluster {h.cluster}", "bold"),
           Part.of(mode, "dim", short=mode_short, drop=3)]
    if h.redis_ok is None:
        redis: Seg = ("● connecting", "#ff8c00")
    elif h.redis_ok:
        redis = ("● up", "bold green")
    else:
        redis = ("● DOWN", "bold red")
    one.append(Part((("Redis ", ""), redis)))
    one.append(Part.of(location, "dim", drop=1))
    if h.version is not None:
        one.append(Part.of(f"v{h.version}", "dim", short=f"v{h.version}", drop=2))
    if h.security == "hmac":
        one.append(Part.of("signed", "green", drop=4))
    elif h.security == "mtls":
        one.append(Part.of("mutual TLS", "green", drop=4))
    elif h.security is not None:
        one.append(Part.of("UNSIGNED" if h.security == "insecure-loopback" else "MIXED",
                           "#ff8c00", drop=5))
    short_of_quorum = h.answering < h.quorum
    two = [Part.of(f"members {h.members}", "bold"),
           Part.of(f"quorum {h.quorum}"),
           Part.of(f"answering {h.answering}/{h.members}", "bold red" if short_of_quorum else "",
                   short=f"up {h.answering}/{h.members}")]
    if len(h.geese) >= 2:
        two.append(Part((("goose ", ""), (" / ".join(f"{n} (t{t})" for n, t in h.geese),
                                          "bold red"))))
    elif h.goose is not None:
        two.append(Part((("goose ", ""), (f"★ {h.goose}", "bold black on #ffd200"))))
        two.append(Part.of(f"term {h.term}", "bold"))
    else:
        two.append(Part((("goose ", ""), ("NONE", "bold red"))))
        if h.max_term is not None:
            two.append(Part.of(f"highest term seen {h.max_term}", short=f"max term {h.max_term}",
                               drop=2))
    t = h.timing
    if t is not None and t.changing:
        waiting = f" · waiting for {', '.join(t.waiting_for)}" if t.waiting_for else ""
        two.append(Part((("timing ", ""), (f"{' + '.join(t.others)} → {t.target}",
                                           "bold #ff8c00"), (waiting, "#ff8c00")),
                        short=(("timing → ", ""), (t.target, "bold #ff8c00")), drop=2))
    elif t is not None:
        two.append(Part.of(f"timing {t.target}", short=t.target, drop=2))
    two.append(Part.of(poll, "dim", short=poll_short, drop=1))
    return one, two
