"""What the header and each table row show, built from the model at one instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ddg.core import quorum_of
from ddg.status import Role

from .fmt import fmt_ms

if TYPE_CHECKING:
    from .model import ClusterModel, Severity

GOOSE = Role.GOOSE


@dataclass(frozen=True, kw_only=True, slots=True)
class RowView:
    """What one table row shows. `role` also takes the console-side states below."""

    name: str
    address: str
    role: str  # goose | duck | candidate | unreachable | killed | stopped | exited | pending
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
    security: str | None = None  # the nodes' mode: hmac, insecure-loopback or mixed


def header_view(m: ClusterModel, now: float) -> HeaderView:
    current = m.geese()
    split = m.tracker.split
    answering = sum(1 for n in m.members
                    if (o := m.latest.get(n)) is not None and o.reply.ok)
    terms = [o.reply.status.term for o in m.last_ok.values()
             if o.reply.status is not None]
    leaderless = m.leaderless_ms(now)
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
        banner = f"NO GOOSE{since}{last} — election in progress or no quorum"
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
        quorum=quorum_of(len(m.members)),
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
    )


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
        if proc is None and st.pid is not None:
            base["pid"] = st.pid
        return RowView(
            **base, role=st.role, term=st.term,
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
    if proc is not None and proc.state in ("killed", "stopped", "exited"):
        ago = fmt_ms((now - proc.since) * 1000)
        what = {
            "killed": f"killed here {ago} ago",
            "stopped": f"stopped here {ago} ago",
            "exited": f"process exited{'' if proc.code is None else f' ({proc.code})'} "
                      f"{ago} ago{': ' + proc.detail if proc.detail else ''}",
        }[proc.state]
        return RowView(**base, **known, role=proc.state, state=what,
                       level="error" if proc.state == "exited" else "warning")
    return RowView(**base, **known, role="unreachable",
                   state=f"no answer {silent}: {obs.reply.error}", level="error")
