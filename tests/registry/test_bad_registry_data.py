"""Registry data no node wrote, and more members than the registry takes: a problem the nodes
report, never a crash. Each against real nodes: real redis-server, real ddg-node processes, real
HTTP; every wait has a deadline (fixed-time loops only observe)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from ddg_testkit import LocalCluster
from ddg_testkit.adversary import (
    MAX_MEMBERS,
    Make,
    Sample,
    _add_ghosts,
    check_cli_output,
    double_geese,
    everyone_sees,
    geese_in,
    keys,
    rclient,
    registry_problem,
    silent_listener,
    started_cluster,
    watch,
)

pytestmark = pytest.mark.integration


# ---- bad registry data -------------------------------------------------------------------


def _corrupt(variant: str, r: redis.Redis, mk: str, vk: str) -> None:
    if variant == "version-not-integer":
        r.set(vk, "abc")
    elif variant == "member-name-not-utf8":
        r.hset(mk, b"\xff\xfe", json.dumps({"address": "http://127.0.0.1:9", "joined_at": 0}))
    elif variant == "version-out-of-range":
        r.set(vk, 2**53)
    elif variant == "members-wrong-type":
        with r.pipeline(transaction=True) as p:
            p.delete(mk)
            p.set(mk, "not a hash")
            p.execute()
    else:
        raise AssertionError(variant)


def _fix(variant: str, r: redis.Redis, mk: str, vk: str, version: int,
         members: dict[bytes, bytes]) -> None:
    if variant in ("version-not-integer", "version-out-of-range"):
        r.set(vk, version)
    elif variant == "member-name-not-utf8":
        r.hdel(mk, b"\xff\xfe")
    else:
        with r.pipeline(transaction=True) as p:
            p.delete(mk)
            p.hset(mk, mapping=members)
            p.execute()


BAD_DATA = ["version-not-integer", "member-name-not-utf8", "version-out-of-range",
            "members-wrong-type"]


def test_bad_registry_data_is_a_problem_not_a_crash(make_cluster: Make) -> None:
    """Each corruption hits its own 3-node cluster (cluster name = the corruption), all four
    at once on one Redis, so that the 3 s during which every node must keep running and
    electing are observed once for all of them."""
    first = make_cluster(cluster=BAD_DATA[0])
    clusters = {BAD_DATA[0]: first}
    for variant in BAD_DATA[1:]:
        clusters[variant] = make_cluster(cluster=variant, redis_url=first.redis_url)
    names = {v: c.start(3) for v, c in clusters.items()}
    for v, c in clusters.items():
        c.wait_goose(timeout=10)
        c.wait_for(lambda c=c, v=v: everyone_sees(c, names[v]), timeout=8,
                   what=f"{v}: 3 members everywhere")
    r = rclient(first.redis_url or "")
    try:
        saved: dict[str, tuple[int, dict[bytes, bytes]]] = {}
        for v, c in clusters.items():
            mk, vk, ek, _ik = keys(c)
            saved[v] = (int(r.get(vk)), r.hgetall(mk))
            _corrupt(v, r, mk, vk)
            r.publish(ek, json.dumps({"op": "poke"}))
        clis = {v: subprocess.Popen(
            [sys.executable, "-m", "ddg", "status", "--redis-url", c.redis_url or "",
             "--cluster", c.cluster], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True) for v, c in clusters.items()}
        samples: dict[str, list[Sample]] = {v: [] for v in clusters}
        end = time.monotonic() + 3.0
        while time.monotonic() < end:  # observe all four clusters for 3 s
            for v, c in clusters.items():
                samples[v].append(c.roles(names[v]))
            time.sleep(0.01)
        problems: dict[str, list[str]] = {v: [] for v in clusters}
        for v, cli in clis.items():
            try:
                out, _ = cli.communicate(timeout=15)
                rc: int | None = cli.returncode
            except subprocess.TimeoutExpired:
                cli.kill()
                out, _ = cli.communicate()
                rc = None
            problems[v] += check_cli_output(rc, out)
        for v, c in clusters.items():
            dead = {n: c.returncode(n) for n in names[v] if not c.running(n)}
            if dead:
                problems[v].append(f"nodes exited (exit codes {dead}):\n"
                                   + "\n".join(c.log_tail(n, 6) for n in dead))
            doubles = double_geese(samples[v])
            if doubles:
                problems[v].append(f"two geese in {len(doubles)} samples, e.g. {doubles[:2]}")
            one = sum(1 for s in samples[v] if len(geese_in(s)) == 1)
            if one < 0.9 * len(samples[v]) or len(geese_in(samples[v][-1])) != 1:
                problems[v].append(f"no goose in {len(samples[v]) - one} of {len(samples[v])} "
                                   f"samples (last: {samples[v][-1]})")
            statuses = c.statuses(names[v])
            silent = [n for n, st in statuses.items() if not registry_problem(st)]
            if silent:
                problems[v].append(f"/status redis.problem not set on {silent}: "
                                   f"{[(st or {}).get('redis') for st in statuses.values()]}")
        report = "\n".join(f"[{v}] {p}" for v, ps in problems.items() for p in ps)
        assert not report, report

        # the operator repairs the data: the nodes recover and write nothing absurd back
        for v, c in clusters.items():
            mk, vk, ek, _ik = keys(c)
            _fix(v, r, mk, vk, *saved[v])
            r.publish(ek, json.dumps({"op": "poke"}))

        def recovered(c: LocalCluster, want: list[str]) -> bool:
            return all(st is not None and not registry_problem(st) and st.redis.connected
                       and list(st.members) == sorted(want) for st in c.statuses(want).values())

        for v, c in clusters.items():
            c.wait_for(lambda c=c, v=v: recovered(c, names[v]), timeout=6,
                       what=f"{v}: recovery after the repair")
            c.wait_goose(among=names[v])
        seen: dict[str, set[bytes | None]] = {v: set() for v in clusters}
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # observe what the nodes write back
            for v, c in clusters.items():
                seen[v].add(r.get(keys(c)[1]))
            time.sleep(0.05)
        for v, c in clusters.items():
            version = saved[v][0]
            bad = [x for x in seen[v]
                   if x is None or not x.isdigit() or not 0 < int(x) <= version + 100]
            assert not bad, f"[{v}] version {version} was overwritten with {bad}"
            for n in names[v]:
                cache = c.base_dir / "data" / n / "members.json"
                if cache.exists():
                    cached = json.loads(cache.read_text())
                    assert cached["version"] <= version + 100, (v, n, cached["version"])
    finally:
        r.close()


def test_too_many_members_is_a_registry_problem(make_cluster: Make) -> None:
    c, names, goose = started_cluster(make_cluster)
    r = rclient(c.redis_url)
    try:
        with silent_listener() as port:
            _add_ghosts(c, r, MAX_MEMBERS + 1 - len(names), port)  # MAX_MEMBERS + 1 in all
            samples = watch(c, 2.0, names)
            problems: list[str] = []
            one = sum(1 for s in samples if len(geese_in(s)) == 1)
            if one < 0.9 * len(samples) or len(geese_in(samples[-1])) != 1:
                problems.append(f"no goose in {len(samples) - one} of {len(samples)} samples "
                                f"(last: {samples[-1]})")
            statuses = c.statuses(names)
            for n, st in statuses.items():
                if st is None or not registry_problem(st) or list(st.members) != sorted(names):
                    problems.append(f"{n}: expected a registry problem and the old members: "
                                    f"{st and (st.get('redis'), len(st['members']))}")
            assert not problems, "\n".join(problems)
            # the cluster still elects on the membership it had (quorum 2 of 3)
            c.kill(goose)
            c.wait(goose, 5)
            c.wait_goose(among=names, exclude=[goose])
    finally:
        r.close()
