"""Why a cluster has no goose, or what is wrong beside its goose: `ddg-node status` says it in
one line per cause, each with its fix, and exits with the health's code (Health)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import NamedTuple

from ddg.client.http import Reply
from ddg.client.nodestatus import NodeStatus
from ddg.election.core import quorum_of
from ddg.registry.keys import DEFAULT_CLUSTER
from ddg.registry.records import Membership


class Health(IntEnum):
    """`ddg-node status`'s exit code (1 and 2 stay the errors of every ddg-node command: Redis
    unreachable, bad arguments)."""

    OK = 0  # a goose, every member answers, nothing mixed
    DEGRADED = 3  # a goose, but a member is silent or the members disagree on a setting
    NO_GOOSE = 4  # no member is the goose: no cluster, no quorum, or an election under way


class Diagnosis(NamedTuple):
    health: Health
    lines: tuple[str, ...]  # one cause each, with its fix


def _names(names: list[str]) -> str:
    return ", ".join(names)


def diagnose(cluster: str, membership: Membership, replies: Mapping[str, Reply],
             *, where: str = "") -> Diagnosis:
    """CLUSTER's health from its MEMBERSHIP (Redis) and every member's /status (REPLIES).
    WHERE: the Redis, for the lines."""
    opt = "" if cluster == DEFAULT_CLUSTER else f" --cluster {cluster}"
    members = sorted(membership.members)
    if not members:
        what = (f"cluster {cluster!r} does not exist in Redis{where}"
                if membership.cluster_id is None else
                f"cluster {cluster!r} has no members (version {membership.version})")
        return Diagnosis(Health.NO_GOOSE, (
            f"no cluster: {what}: start one node with --bootstrap (ddg-node --name NAME "
            f"--bootstrap{opt}), then the others without it",))
    answering = {n: r.status for n, r in replies.items() if r.status is not None}
    # A TLS failure is this command's trust, not a dead node: never advise removing those.
    unverified = [n for n in members if n in replies and (replies[n].error or "")
                  .startswith("TLS:")]
    silent = [n for n in members if n not in answering and n not in unverified]
    geese = sorted(n for n, st in answering.items() if st.is_goose)
    need = quorum_of(len(members))
    lines: list[str] = []
    if not geese:
        if unverified:
            # Those may well hold a goose and a quorum: this command cannot see them, so it
            # claims no quorum and advises no removal (--force would skip the confirmations).
            lines.append(f"no goose seen: {len(answering)} of {len(members)} members answer "
                         f"this command, {len(unverified)} cannot be verified")
        elif len(answering) < need:
            lines.append(f"no quorum: {len(answering)} of {len(members)} members answer, "
                         f"{need} needed; silent: {_names(silent + unverified)}")
        else:
            lines.append(f"no goose, though {len(answering)} of {len(members)} members answer "
                         f"({need} needed): an election is under way, or they cannot reach "
                         "each other (see ERROR and each node's log)")
    if unverified:
        lines.append(f"cannot verify {_names(unverified)} over TLS (see ERROR): pass the "
                     "cluster's CA with --tls-ca FILE (and --tls-cert/--tls-key if the nodes "
                     "ask for a client certificate)")
    if silent and not answering and not unverified:
        lines.append(f"every member is silent ({_names(silent)}): this registry holds an old "
                     "cluster (a Redis that kept an earlier run's data?), or every node is "
                     f"down. Start them, or if they are gone for good: ddg-node remove --force "
                     f"{' '.join(silent)}{opt}")
    elif silent and geese:
        for name in silent:  # (the table's ERROR column says why)
            lines.append(f"{name} does not answer; if it is gone for good: ddg-node remove "
                         f"{name}{opt}")
    elif silent and unverified:
        for name in silent:
            lines.append(f"{name} does not answer (see ERROR)")
    elif silent:
        # No goose, so no majority confirms a removal: only --force takes them out. Enough of
        # them gone and the rest elect.
        lines.append(f"silent members ({_names(silent)}): if they are gone for good (an old "
                     "cluster's members, from a Redis that kept its data?), the rest elect once "
                     f"they are removed: ddg-node remove --force {' '.join(silent)}{opt}")
    lines.extend(_mixed(answering))
    if len(geese) > 1:
        lines.append(f"{_names(geese)} all answer goose (one of them an old goose whose lease "
                     "just ended, if it does not last)")
    if not geese:
        return Diagnosis(Health.NO_GOOSE, tuple(lines))
    return Diagnosis(Health.DEGRADED if lines else Health.OK, tuple(lines))


def _mixed(sts: Mapping[str, NodeStatus]) -> list[str]:
    """One line per setting the answering members disagree on, and per member in trouble."""
    lines: list[str] = []
    checks: list[tuple[str, dict[str, str]]] = [
        ("versions", {n: st.version or "?" for n, st in sts.items()}),
        ("security", {n: st.security or "?" for n, st in sts.items()}),
        # (not while a change runs: the members then switch one after another, and the timing
        # line says whom the change waits for)
        ("timing", {} if any(st.timing.changing for st in sts.values()) else
         {n: " + ".join(st.timing.timings) or "?" for n, st in sts.items()}),
        ("cluster ids", {n: st.cluster_id or "?" for n, st in sts.items()}),
    ]
    for what, by_node in checks:
        groups: dict[str, list[str]] = {}
        for n, v in sorted(by_node.items()):
            groups.setdefault(v, []).append(n)
        if len(groups) > 1:
            lines.append(f"mixed {what}: " + "; ".join(
                f"{v} ({_names(ns)})" for v, ns in sorted(groups.items())))
    for n, st in sorted(sts.items()):
        if not st.redis.connected:
            lines.append(f"{n} cannot reach Redis ({st.redis.error or 'no reason given'})")
        elif st.redis.problem:
            lines.append(f"{n} will not use the registry: {st.redis.problem}")
        if st.clock.contradicted:
            lines.append(f"{n}'s clock rate is contradicted by its peers' clocks: it does not "
                         "lead until they agree (check the host's clock source)")
        if st.joining:
            lines.append(f"{n} has not joined: {st.joining}")
    return lines
