"""`ddg-node remove`, `ddg-node status` and `ddg-node config show|set`: a cluster's members
and its timing, read from Redis and from every member's /status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from ddg.cli.args import (
    CliError,
    Parser,
    add_redis_arguments,
    add_timing_arguments,
    add_tls_arguments,
    redis_options,
    timing_from_args,
    timing_given,
    tls_from_args,
)
from ddg.cli.diagnosis import Health, diagnose
from ddg.client.http import NodeClient, Reply
from ddg.election.names import check_name
from ddg.election.timing import JointTiming, Timing, TimingRecord
from ddg.errors import (
    ChangeWaiting,
    NoCluster,
    NotAMember,
    RegistryError,
    RegistryUnavailable,
)
from ddg.net.tls import TlsConfig
from ddg.registry.records import Membership, TimingState
from ddg.registry.redisconn import RedisOptions
from ddg.registry.registry import Registry


def cmd_remove(argv: Sequence[str]) -> int:
    p = Parser(prog="ddg-node remove",
                description="Remove members from the cluster's registry, alive or dead, one "
                            "at a time in the order given. A live node notices within a "
                            "heartbeat or two and exits; a removed node's data dir never "
                            "joins again. The registry takes each removal once a majority of "
                            "the members have confirmed the current membership version "
                            "(milliseconds on a healthy cluster): this waits for that. Exit "
                            "status 0 when every name was removed, 1 when a name was not a "
                            "member (the others are removed) or a removal failed (the names "
                            "after it are left alone).")
    p.add_argument("names", nargs="+", metavar="name")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="wait at most this long, for each name, for a majority of the "
                        "members to confirm the current membership version; then fail, "
                        "removing nothing more (default %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="remove without that confirmation: ONLY for members that are down for "
                        "good (their hosts gone), when a majority of the cluster is lost and "
                        "cannot confirm any more. A member that is only cut off may then lead "
                        "beside the rest: two geese")
    add_redis_arguments(p)
    ns = p.parse_args(argv)
    names = list(dict.fromkeys(check_name("node name", n) for n in ns.names))
    if not 0 <= ns.timeout <= 3600:
        raise CliError(f"--timeout must be between 0 and 3600 seconds, not {ns.timeout:g}")
    options = redis_options(ns)
    cluster = check_name("cluster name", ns.cluster)

    async def go() -> int:
        registry = Registry(options, cluster, timeout=2.0)
        code = 0
        try:
            for i, name in enumerate(names):
                try:
                    version = await registry.remove(name, wait=ns.timeout, force=ns.force)
                except NotAMember:
                    print(f"{name} is not a member of cluster {cluster}: nothing to remove",
                          file=sys.stderr, flush=True)
                    code = 1
                    continue
                except ChangeWaiting as exc:
                    rest = names[i + 1:]
                    left = f" ({', '.join(rest)} not tried)" if rest else ""
                    raise CliError(f"{name} not removed (nothing written) after "
                                   f"{ns.timeout:g} s: {exc}; if a majority of the members is "
                                   f"down for good, see --force{left}") from None
                print(f"removed {name} from cluster {cluster} (membership version {version})",
                      flush=True)
        finally:
            await registry.close()
        return code

    code: int = _redis(options, go)
    return code


def _redis(options: RedisOptions, fn: Any) -> Any:
    try:
        return asyncio.run(fn())
    except RegistryUnavailable as exc:
        raise CliError(f"cannot reach Redis at {options.shown}: {exc}") from None
    except NoCluster as exc:
        raise CliError(str(exc)) from None
    except RegistryError as exc:
        raise CliError(f"registry problem: {exc}") from None


async def fetch_statuses(addresses: dict[str, str], request_timeout: float,
                         tls: TlsConfig | None = None) -> dict[str, Reply]:
    client = NodeClient(timeout=request_timeout, tls=tls)
    try:
        replies = await asyncio.gather(*(client.poll(a) for a in addresses.values()))
    finally:
        await client.aclose()
    return dict(zip(addresses, replies, strict=True))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _polling(p: argparse.ArgumentParser) -> None:
    """The options of a command that asks every member for its /status."""
    p.add_argument("--timeout", type=float, default=1.0, help="per-node timeout in s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_tls_arguments(p, node=False)


def read_cluster(ns: argparse.Namespace) -> tuple[Membership, TimingState, dict[str, Reply]]:
    """The membership and timing record from Redis, and every member's /status answer."""
    options = redis_options(ns)
    tls = tls_from_args(ns)
    cluster = check_name("cluster name", ns.cluster)

    async def go() -> tuple[Membership, TimingState, dict[str, Reply]]:
        registry = Registry(options, cluster, timeout=2.0)
        try:
            membership = await registry.read()
            timing = await registry.read_timing()
        finally:
            await registry.close()
        addresses = {n: m.address for n, m in sorted(membership.members.items())}
        return membership, timing, await fetch_statuses(addresses, ns.timeout, tls)

    result: tuple[Membership, TimingState, dict[str, Reply]] = _redis(options, go)
    return result


STATUS_EXIT_CODES = f"""exit codes (also with --json):
  {Health.OK:d}  a goose, every member answers, the members agree on their settings
  {Health.DEGRADED:d}  a goose, but something to fix: a member does not answer, mixed versions,
     security or timing, a member without Redis or with a contradicted clock
  {Health.NO_GOOSE:d}  no goose: no cluster (start one node with --bootstrap), no quorum (which
     members are silent, how many are needed), or an election under way
  1  an error: Redis unreachable, its data unusable; 2  bad arguments
Each problem is one line under the table, with its fix."""


def cmd_status(argv: Sequence[str]) -> int:
    p = Parser(prog="ddg-node status",
               description="Show every member's answer, one row each, and say what is wrong "
                           "with the cluster, one line per cause, with its fix.",
               epilog=STATUS_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_redis_arguments(p)
    _polling(p)
    ns = p.parse_args(argv)
    membership, timing, replies = read_cluster(ns)
    found = diagnose(ns.cluster, membership, replies,
                     where=f" at {redis_options(ns).shown}")
    if ns.json:
        members = {n: r.status.to_json() if r.status is not None else {"error": r.error}
                   for n, r in replies.items()}
        print(json.dumps({"version": membership.version, "members": members,
                          "timing": timing_json(timing), "health": found.health.name.lower(),
                          "exit_code": int(found.health), "problems": list(found.lines)},
                         indent=2))
        return int(found.health)
    if membership.members:
        rows = [("NAME", "ADDRESS", "ROLE", "TERM", "GOOSE", "ERROR")]
        for name, r in replies.items():
            st = r.status
            rows.append((name, membership.members[name].address, st.role if st else "-",
                         str(st.term) if st else "-", (st.goose if st else None) or "-",
                         r.error or ""))
        print_table(rows)
    for line in found.lines:
        print(line)
    if membership.members:
        print(f"timing: {timing_line(timing)}")
    return int(found.health)


# ---- the cluster's timing ---------------------------------------------------------------


def timing_line(state: TimingState) -> str:
    """One line: the cluster's timing, any change in progress and whom it waits for."""
    rec = state.record
    if rec is None:
        return (f"unusable record ({state.problem})" if state.problem else
                "no record yet (a cluster made by an older version: its goose writes one)")
    line = rec.describe()
    if rec.changing:
        line += (f"; waiting for {', '.join(state.waiting_for)} to confirm"
                 if state.waiting_for else "; every member confirmed: finishing")
    return line


def _joint_json(t: JointTiming) -> dict[str, Any]:
    return {"heartbeat_ms": round(t.heartbeat * 1000, 3),
            "election_timeout_ms": [round(t.election_min * 1000, 3),
                                    round(t.election_max * 1000, 3)],
            "lease_ms": round(t.lease * 1000, 3), "lease_wait_ms": round(t.lease_wait * 1000, 3)}


def timing_json(state: TimingState) -> dict[str, Any] | None:
    rec = state.record
    if rec is None:
        return None if state.problem is None else {"problem": state.problem}
    return {"epoch": rec.epoch, "changing": rec.changing,
            "target": {"label": rec.target.label, **rec.target.to_json()},
            "timings": [{"label": t.label, **t.to_json()} for t in rec.timings],
            "in_force": _joint_json(rec.joint), "fingerprint": rec.fingerprint,
            "confirmed": sorted(state.confirmed), "waiting_for": list(state.waiting_for)}


def _config_parser(sub: str, description: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"ddg-node config {sub}", description=description)
    add_redis_arguments(p)
    return p


def cmd_config(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("show", "set"):
        p = Parser(prog="ddg-node config",
                    description="Show or change the cluster's timing: `ddg-node config show`, "
                                "`ddg-node config set --timing fast`.")
        p.add_argument("what", choices=("show", "set"))
        p.parse_args(argv[:1])
        return 2
    return (cmd_config_show if argv[0] == "show" else cmd_config_set)(argv[1:])


def cmd_config_show(argv: Sequence[str]) -> int:
    p = _config_parser("show", "The cluster's timing (from Redis), any change in progress, "
                               "and the timing each member answers with.")
    _polling(p)
    ns = p.parse_args(argv)
    cluster = ns.cluster
    membership, state, replies = read_cluster(ns)
    if membership.cluster_id is None and not membership.members:
        raise CliError(f"cluster {cluster!r} does not exist in Redis at "
                       f"{redis_options(ns).shown}")
    if ns.json:
        members = {name: {"error": r.error} if r.status is None else
                   {"epoch": r.status.timing.epoch, "timings": list(r.status.timing.timings),
                    "confirmed": name in state.confirmed}
                   for name, r in replies.items()}
        print(json.dumps({"cluster": cluster, "record": timing_json(state), "members": members},
                         indent=2))
        return 0
    rec = state.record
    print(f"cluster {cluster}: {timing_line(state)}")
    if rec is not None:
        for t in rec.timings:
            mark = "target" if t == rec.target else "in force"
            print(f"  {mark:8}  {t.label}: {_values(t)}")
        if rec.changing:
            print(f"  every node runs the joint timing until all confirm: "
                  f"{_joint_values(rec.joint)}")
    rows = [("MEMBER", "EPOCH", "CONFIRMED", "RUNS")]
    for name, r in replies.items():
        st = r.status
        confirmed = "yes" if name in state.confirmed else "no"
        if st is None:
            rows.append((name, "-", confirmed, f"does not answer: {r.error}"))
        else:
            epoch = "-" if st.timing.epoch is None else str(st.timing.epoch)
            rows.append((name, epoch, confirmed, " + ".join(st.timing.timings)))
    print_table(rows)
    return 0


def _values(t: Timing) -> str:
    return (f"heartbeat {t.heartbeat_ms} ms, election timeout {t.election_timeout_min_ms}-"
            f"{t.election_timeout_max_ms} ms, lease {t.lease * 1000:g} ms (a new goose waits "
            f"{t.lease_wait * 1000:g} ms)")


def _joint_values(t: JointTiming) -> str:
    return (f"heartbeat {t.heartbeat * 1000:g} ms, election timeout {t.election_min * 1000:g}-"
            f"{t.election_max * 1000:g} ms, lease {t.lease * 1000:g} ms, wait "
            f"{t.lease_wait * 1000:g} ms")


def cmd_config_set(argv: Sequence[str]) -> int:
    p = _config_parser("set", "Change the running cluster's timing. The nodes run the new and "
                              "the old together (the safe combination of both) until every "
                              "member has confirmed, then the new one alone: no election, no "
                              "restart. A member that is down holds the change until it is "
                              "back or removed.")
    add_timing_arguments(p, node=False)
    p.add_argument("--wait", action="store_true",
                   help="wait until every node runs the new timing alone")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="with --wait: give up after this many seconds (default %(default)s)")
    ns = p.parse_args(argv)
    if not timing_given(ns):
        p.error("give the new timing: --timing NAME, or any of --heartbeat-ms, "
                "--election-timeout-ms, --lease-ms")
    if not 0 < ns.timeout <= 3600:
        p.error("--timeout must be more than 0 and at most 3600 s")
    options = redis_options(ns)
    cluster = check_name("cluster name", ns.cluster)
    if ns.timing is not None:
        timing_from_args(ns)  # a bad value is an error before Redis is asked

    async def go() -> tuple[str, TimingRecord]:
        registry = Registry(options, cluster, timeout=2.0)
        try:
            before, changed = await registry.change_timing(
                lambda target: timing_from_args(ns, base=target))
        finally:
            await registry.close()
        if changed is None:
            what = "a change to it is in progress" if before.changing else "nothing to do"
            return (f"cluster {cluster} already has timing {before.target.label} as its "
                    f"target (epoch {before.epoch}): {what}"), before
        return (f"cluster {cluster}: timing change to {changed.target.label} as epoch "
                f"{changed.epoch}; every node runs it with "
                f"{', '.join(t.label for t in before.timings)} until all confirm"), changed

    message, record = _redis(options, go)
    print(message)
    if not ns.wait:
        return 0
    return _wait_for_timing(options, cluster, record, ns.timeout)


def _wait_for_timing(options: RedisOptions, cluster: str, record: TimingRecord,
                     timeout: float) -> int:
    """Until the record is RECORD's target alone (a later change by someone else: said)."""
    async def go() -> tuple[bool, str]:
        registry = Registry(options, cluster, timeout=2.0)
        deadline = time.monotonic() + timeout
        line = ""
        try:
            while time.monotonic() < deadline:
                state = await registry.read_timing()
                rec = state.record
                line = timing_line(state)
                if rec is not None and rec.target != record.target:
                    return False, f"the timing was changed again meanwhile: {line}"
                if rec is not None and not rec.changing and rec.epoch > record.epoch - 1:
                    return True, f"every member runs {rec.target.label} (epoch {rec.epoch})"
                await asyncio.sleep(0.05)
        finally:
            await registry.close()
        return False, f"not done after {timeout:g} s: {line}"

    done, line = _redis(options, go)
    if not done:
        raise CliError(line)
    print(line)
    return 0
