"""Removed means removed (issue 19): a data dir whose node was removed refuses to join again,
with one line that says how to join as a new member; `ddg-node remove` takes several names,
one change at a time; a name that is not a member is a plain line and exit 1. Real Redis, real
node processes. And `ddg-node data-dirs` tells those data dirs apart and prunes them."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ddg.election.timing import Timing, TimingRecord
from ddg.local.embedded import EmbeddedRedis
from ddg.node.storage import DataDir
from ddg.registry.records import Member, Membership
from ddg.registry.registry import Registry
from ddg_testkit import LocalCluster
from ddg_testkit.cli import ddg

pytestmark = pytest.mark.integration

Make = Callable[..., LocalCluster]


def members(c: LocalCluster, url: str) -> list[str]:
    """The registry's members, read with redis-cli (not through the code under test)."""
    out = subprocess.run(["redis-cli", "-u", url, "HKEYS", f"ddg:{c.cluster}:members"],
                         capture_output=True, text=True, timeout=10, check=True)
    return sorted(out.stdout.split())


def refused_line(c: LocalCluster, name: str) -> str:
    """Start NAME again on its data dir: it must exit 3 with one line, joining nothing."""
    c.restart(name)
    code = c.wait(name, 20)
    assert code == 3, c.log_tail(name)
    lines = [ln for ln in c.log_tail(name, 40).splitlines() if "removed from cluster" in ln]
    assert lines, c.log_tail(name)
    return lines[-1]


def test_a_removed_data_dir_never_joins_again_a_new_one_does(make_cluster: Make) -> None:
    c = make_cluster(cluster="gone")
    names = c.start(4)
    goose = c.wait_goose(timeout=10)
    url = c.redis_url
    assert url is not None
    live, dead = [n for n in names if n != goose][:2]
    c.kill(dead)  # down when it is removed: only the registry's tombstone knows
    c.wait(dead, 5)

    out = ddg("remove", live, dead, "--redis-url", url, "--cluster", "gone")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"removed {live} from cluster gone")
    assert lines[1].startswith(f"removed {dead} from cluster gone"), lines
    assert c.wait(live, 15) == 0, "a live node that was removed exits 0 by itself"
    assert (c.data_dir(live) / "removed.json").is_file()
    assert not (c.data_dir(dead) / "removed.json").exists()

    for name in (live, dead):  # the local mark, then the registry's tombstone
        line = refused_line(c, name)
        assert f"this data dir ({c.data_dir(name)}) is node {name!r}, removed from cluster " \
               "'gone'" in line, line
        assert "to join as a new member" in line and "--data-dir" in line
        assert name not in members(c, url)
    assert (c.data_dir(dead) / "removed.json").is_file(), "the refusal marks it locally too"
    c.wait_goose(set(names) - {live, dead}, timeout=10)

    # even if Redis forgets the tombstones, the marked data dir stays out
    assert subprocess.run(["redis-cli", "-u", url, "DEL", "ddg:gone:removed"],
                          capture_output=True, timeout=10).returncode == 0
    refused_line(c, dead)
    assert sorted(members(c, url)) == sorted(set(names) - {live, dead})

    # a new member under the same name: an empty data dir joins
    c.forget(live)
    c.add(live, data_dir=c.base_dir / "data" / f"{live}-new")
    c.wait_joined(set(names) - {dead})
    assert members(c, url) == sorted(set(names) - {dead})


def test_remove_takes_several_names_and_an_absent_one_is_a_plain_line(
        make_cluster: Make) -> None:
    c = make_cluster(cluster="many")
    names = c.start(5)
    c.wait_goose(timeout=10)
    url = c.redis_url
    assert url is not None
    a, b, keep = names[2], names[3], names[:2] + names[4:]

    out = ddg("remove", a, "ghost", b, a, "--redis-url", url, "--cluster", "many")
    assert out.returncode == 1, "a name that was not a member: exit 1"
    assert out.stderr == "ghost is not a member of cluster many: nothing to remove\n"
    got = out.stdout.splitlines()
    assert [ln.split(" (")[0] for ln in got] == [f"removed {a} from cluster many",
                                                 f"removed {b} from cluster many"]
    va, vb = (int(ln.rsplit(" ", 1)[1].rstrip(")")) for ln in got)
    assert vb == va + 1, "one change at a time, each after the one before"
    assert members(c, url) == sorted(keep)

    again = ddg("remove", a, "--redis-url", url, "--cluster", "many")
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == f"{a} is not a member of cluster many: nothing to remove\n"
    assert "registry problem" not in again.stderr and "error" not in again.stderr

    bad = ddg("remove", "ok", "bad name!", "--redis-url", url, "--cluster", "many")
    assert bad.returncode == 1 and "node name" in bad.stderr and bad.stdout == ""


def test_data_dirs_lists_and_prunes_only_what_is_not_a_member(make_cluster: Make,
                                                              tmp_path: Path) -> None:
    c = make_cluster(cluster="dirs")
    names = c.start(3)
    goose = c.wait_goose(timeout=10)
    url = c.redis_url
    assert url is not None
    gone, stopped = [n for n in names if n != goose]
    assert ddg("remove", gone, "--redis-url", url, "--cluster", "dirs").returncode == 0
    assert c.wait(gone, 15) == 0
    c.stop(stopped)  # stopped, still a member: kept
    root = c.base_dir / "data"
    stray = root / "stray"  # a data dir of a cluster Redis does not hold: kept
    stray.mkdir()
    (stray / "node.json").write_text(json.dumps({"node_id": "a" * 32, "name": "stray",
                                                 "cluster": "nowhere"}))

    listed = ddg("data-dirs", "--root", str(root), "--redis-url", url)
    assert listed.returncode == 0, listed.stderr
    rows = {ln.split()[0]: ln for ln in listed.stdout.splitlines()[1:]}
    state = {Path(p).name: " ".join(r.split()[3:]) for p, r in rows.items()}
    assert state == {goose: "in use", stopped: "member", gone: "removed",
                     "stray": "unknown (no cluster nowhere in Redis)"}, listed.stdout
    assert rows[str(root / gone)].split()[1:3] == [gone, "dirs"]

    no = ddg("data-dirs", "--root", str(root), "--redis-url", url, "--prune", stdin="n\n")
    assert no.returncode == 1 and "nothing deleted" in no.stdout
    assert (root / gone).is_dir()
    yes = ddg("data-dirs", "--root", str(root), "--redis-url", url, "--prune", stdin="y\n")
    assert yes.returncode == 0, yes.stderr
    assert f"deleted {root / gone} ({gone}, cluster dirs, removed)" in yes.stdout
    assert sorted(p.name for p in root.iterdir()) == sorted([goose, stopped, "stray"])
    assert ddg("data-dirs", "--root", str(root), "--redis-url", url, "--prune",
               "--yes").stdout.endswith("nothing to prune\n")
    # the stopped member starts again on its data dir, as ever
    c.restart(stopped)
    c.wait_joined([goose, stopped])
    empty = ddg("data-dirs", "--root", str(tmp_path / "none"))
    assert empty.returncode == 0 and "does not exist" in empty.stdout


def test_data_dirs_keeps_what_it_cannot_be_sure_of(tmp_path: Path) -> None:
    """Data dirs written by hand against a real registry: an entry a Redis restore lost (it
    adds itself back when started), one of another cluster under the same name, one that
    never joined; and every one of them while Redis cannot be asked."""
    with EmbeddedRedis() as server:
        async def setup() -> str:
            reg = Registry(server.url, "c", timeout=2.0)
            try:
                cid, _ = await reg.create(Member("a", "http://127.0.0.1:1", node_id="a" * 32),
                                          TimingRecord.first(Timing()))
                return cid
            finally:
                await reg.close()

        cid = asyncio.run(setup())
        root = tmp_path / "ddg"

        def data_dir(name: str, node_id: str, cached: Membership | None) -> None:
            d = DataDir(root / "c" / name)
            d.path.mkdir(parents=True)
            (d.path / "node.json").write_text(json.dumps({"node_id": node_id}))
            if cached is not None:
                d.save_membership(cached)

        lost = Member("lost", "http://127.0.0.1:2", node_id="b" * 32)
        data_dir("a", "a" * 32, None)
        data_dir("lost", "b" * 32, Membership(2, {"lost": lost}, cid))
        data_dir("other", "c" * 32, Membership(2, {"other": lost}, "d" * 32))
        data_dir("never", "e" * 32, None)
        out = ddg("data-dirs", "--root", str(root), "--redis-url", server.url, "--prune",
                  "--yes")
        assert out.returncode == 0, out.stderr
        state = {ln.split()[1]: " ".join(ln.split()[3:]) for ln in out.stdout.splitlines()[1:]
                 if ln.startswith(str(root))}
        assert state == {
            "a": "member",
            "lost": "lost entry (not removed: adds itself back when started)",
            "other": "unknown (Redis holds another cluster of that name)",
            "never": "not a member"}, out.stdout
        assert sorted(p.name for p in (root / "c").iterdir()) == ["a", "lost", "other"]
        url = server.url
    down = ddg("data-dirs", "--root", str(root), "--redis-url", url, "--prune", "--yes")
    assert down.returncode == 0 and down.stdout.endswith("nothing to prune\n"), down.stdout
    assert all("unknown (Redis: " in ln for ln in down.stdout.splitlines()[1:-1]), down.stdout
