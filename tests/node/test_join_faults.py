"""Joining under faults: the registry loses data while a node joins, a node without --bootstrap
waits, a name taken by another data dir, a corrupt state.json. Each against real nodes: real
redis-server, real ddg-node processes, real HTTP; every wait has a deadline (fixed-time loops
only observe)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from ddg.local.launcher import NodeProcess
from ddg_testkit.adversary import (
    Make,
    RoleSampler,
    converged,
    double_geese,
    everyone_sees,
    keys,
    log_text,
    nonblank_lines,
    rclient,
    started_cluster,
    watch,
)

pytestmark = pytest.mark.integration


# ---- the registry loses data while nodes join --------------------------------------------


DATA_LOSS = ["restart-empty-one-joins", "restart-empty-two-join", "flushall-while-joining",
             "restored-old-rdb"]


@pytest.mark.parametrize("variant", DATA_LOSS)
def test_registry_data_loss_while_a_fresh_node_joins(make_cluster: Make, variant: str) -> None:
    c, names, _goose = started_cluster(make_cluster)
    mk, vk, _ek, _ik = keys(c)
    r = rclient(c.redis_url)
    new: list[str] = []
    timed_out = None
    try:
        with RoleSampler(c) as sampler:
            if variant.startswith("restart-empty"):
                c.kill_redis()
                # Down for a while, as a real restart is: the nodes' reconnect back-off grows,
                # so the fresh node may reach the empty Redis before any old member does.
                sampler.samples += watch(c, 2.5)
                c.start_redis()  # same port, no persistence: empty
                count = 1 if variant == "restart-empty-one-joins" else 2
                new = [c.add().name for _ in range(count)]
            elif variant == "flushall-while-joining":
                r.flushall()
                new = [c.add().name]
                end = time.monotonic() + 1.5
                # Flush every few ms while the new node starts, so that one lands between its
                # join and the members' restore (a single FLUSHALL hits that window rarely).
                while time.monotonic() < end:
                    r.flushall()
                    time.sleep(0.002)
            else:  # an RDB from when only the first node was registered
                first = r.hget(mk, names[0])
                with r.pipeline(transaction=True) as p:
                    p.delete(mk)
                    p.hset(mk, names[0], first)
                    p.set(vk, 1)
                    p.execute()
                new = [c.add().name]
            everyone = names + new
            try:
                c.wait_for(lambda: converged(c, everyone), timeout=10,
                           what=f"{len(everyone)} members everywhere and one goose")
            except TimeoutError as exc:
                timed_out = str(exc)
            else:
                sampler.samples += watch(c, 0.5)  # and a little after convergence
        samples = sampler.samples
    finally:
        r.close()
    doubles = double_geese(samples)
    assert not doubles, (f"two geese in {len(doubles)} of {len(samples)} samples, e.g. "
                         f"{doubles[:3]}\n{c.describe()}")
    assert timed_out is None, timed_out


def test_fresh_node_without_bootstrap_waits_for_the_cluster(make_cluster: Make) -> None:
    c = make_cluster()
    mk, _vk, _ek, ik = keys(c)
    c.add("w1", bootstrap=False)
    c.wait_for(lambda: c.role("w1") is not None, timeout=8, what="w1 serves HTTP")
    samples = watch(c, 1.5, ["w1"])
    st = c.status("w1")
    r = rclient(c.redis_url)
    try:
        assert c.running("w1"), log_text(c, "w1")
        assert all(s["w1"] == "duck" for s in samples), (
            "a node without --bootstrap must not form a cluster of its own: "
            f"{[s['w1'] for s in samples][-5:]}")
        assert st is not None and st.state == "joining", st
        assert r.hlen(mk) == 0 and not r.exists(ik), (
            f"registry written by a non-bootstrap node: {r.hgetall(mk)}, id {r.get(ik)}")
        # a bootstrapping node creates the cluster; the waiting one then joins it
        c.add("b1", bootstrap=True)
        assert c.running("b1")
        c.wait_for(lambda: converged(c, ["b1", "w1"]), timeout=8,
                   what="w1 joins the bootstrapped cluster")
        assert r.exists(ik), "the bootstrapped cluster has no id"
    finally:
        r.close()


# ---- same name, another data dir ---------------------------------------------------------


def test_same_name_with_another_data_dir_is_refused(make_cluster: Make) -> None:
    c, names, _goose = started_cluster(make_cluster)
    c.stop(names[0])
    # an outsider under the same name: a process the cluster's supervisor must not adopt
    spec = dataclasses.replace(c.spec(names[0]), data_dir=c.base_dir / "impostor-data",
                               bootstrap=False)
    path = c.base_dir / "logs" / "impostor.log"
    impostor = NodeProcess(spec, log_path=path)
    impostor.start()
    try:
        rc = impostor.wait(6)
    finally:
        impostor.stop()
    out = path.read_text(errors="replace")
    assert rc == 1, (f"same name and address, other data dir: expected exit 1, got "
                     f"{'still running after 6 s' if rc is None else rc}\n{out[-1500:]}")
    assert "Traceback" not in out, out
    assert len([ln for ln in nonblank_lines(out) if "already registered" in ln]) == 1, out
    # the real node still rejoins under its name
    c.restart(names[0])
    c.wait_for(lambda: everyone_sees(c, names) and len(c.geese(names)) == 1, timeout=8,
               what="the real node rejoins")


# ---- corrupt state.json ------------------------------------------------------------------


def test_state_json_with_a_boolean_term_is_refused(make_cluster: Make) -> None:
    c = make_cluster()
    name = "s1"
    data = c.base_dir / "data" / name
    data.mkdir(parents=True)
    (data / "state.json").write_text('{"term": true, "voted_for": null}')
    c.add(name)
    rc = c.wait(name, 5)
    out = log_text(c, name)
    assert rc not in (None, 0), (f"{'still running' if rc is None else 'exit 0'} with "
                                 f"term true in state.json:\n{out[-1000:]}")
    assert "Traceback" not in out, out
    assert len([ln for ln in nonblank_lines(out) if "state.json" in ln]) == 1, out
