"""A rolling upgrade from 0.2.0, for real: three ddg-node processes of the v0.2.0 tag (its
wheel, built from the tag, first on their sys.path), an outside observer and the fault
checker watching, then each node stopped (SIGTERM) and started again as this version on the
same data dir: the ducks first, the goose last (docs/operations.md, "Upgrade node by node").

What it asserts: exactly one goose throughout (the checker's rules), no election but the one
the goose's stop costs (its hand-over), a node of this version and one of 0.2.0 exchanging
messages over HTTP POSTs both ways (the old goose's heartbeats to a new duck; a new duck's
pre-vote to an old one, the stream refused with 404), and the upgraded nodes using the peer
stream between themselves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddg_faults.checker import CheckConfig, Event, Topology, check
from ddg_faults.observer import Observer
from ddg_testkit import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
TAG = "v0.2.0"


@pytest.fixture(scope="module")
def old_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The v0.2.0 wheel, built from the tag and unzipped: a directory for PYTHONPATH."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q",
                            f"{TAG}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"the tag {TAG} is not in this clone (a shallow clone?): "
                    f"`git fetch --tags` to run the upgrade test")
    tmp = tmp_path_factory.mktemp("v020")
    src, wheels, site = tmp / "src", tmp / "wheels", tmp / "site"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", TAG], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", str(src), "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("duckduckgoose-0.2.0-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    assert '__version__ = "0.2.0"' in (site / "ddg" / "__init__.py").read_text()
    return site


def raw_status(address: str) -> dict[str, object]:
    with urllib.request.urlopen(address + "/status", timeout=2) as resp:
        data: dict[str, object] = json.load(resp)
        return data


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(log_level="INFO", allow_fault_injection=True)
    c.start_redis()
    yield c
    c.close()


@pytest.mark.integration
def test_a_rolling_upgrade_from_0_2_0_keeps_one_goose_and_ends_on_the_stream(
        cluster: LocalCluster, old_site: Path) -> None:
    c = cluster
    # The old code first on sys.path, and not the working directory (python -m puts it
    # first otherwise: this checkout's ddg).
    old_env = {"PYTHONPATH": str(old_site), "PYTHONSAFEPATH": "1"}
    names = [c.add(n, env=old_env).name for n in ("n1", "n2", "n3")]
    c.wait_joined(names, timeout=40)
    goose = c.wait_goose(timeout=20)
    for n in names:  # what runs is 0.2.0 (this version says 0.2.0 too, but has streams_in)
        st = raw_status(c.address(n))
        assert st["version"] == "0.2.0" and "streams_in" not in st, st
    everyone = frozenset(names)
    topology = Topology(nodes=everyone, live=everyone)
    observer = Observer({n: c.address(n) for n in names}, interval=0.02)
    observer.start()
    t0 = time.monotonic()
    events = [Event(start=t0, end=t0, kind="observe", topology=topology)]
    term0 = c.status(goose).term  # type: ignore[union-attr]
    try:
        ducks = [n for n in names if n != goose]
        upgraded: list[str] = []
        for n in [*ducks, goose]:
            was_goose = n == goose
            stopping = time.monotonic()
            assert c.stop(n, timeout=10) == 0
            down = Topology(nodes=everyone, live=everyone - {n})
            events.append(Event(start=stopping, end=time.monotonic(), kind="terminate",
                                targets=(n,), topology=down))
            spec = c.spec(n)
            c.forget(n)
            starting = time.monotonic()
            c.add(n, port=spec.port, data_dir=spec.data_dir, bootstrap=False)
            c.wait_for(lambda n=n: ((s := c.status(n)) is not None and s.joining is None
                       and s.goose is not None and s.goose != n) or None, timeout=30,
                       what=f"{n}, upgraded, to follow a goose")
            events.append(Event(start=starting, end=time.monotonic(), kind="restart",
                                targets=(n,), topology=topology))
            upgraded.append(n)
            new = raw_status(c.address(n))
            assert "streams_in" in new, f"{n} does not run this version: {new}"
            if was_goose:
                continue
            # The old goose's heartbeats reach the new duck as POSTs (no stream into it).
            assert new["goose"] == goose and new["streams_in"] == [], new
            if len(upgraded) == 1:
                old_duck = next(d for d in ducks if d not in upgraded)
                new_to_old_http(c, n, goose, old_duck)
        final = c.wait_goose(timeout=20)
        ducks = [n for n in names if n != final]
        c.wait_for(lambda: ((s := c.status(final)) is not None
                   and all(s.peer_links.get(d) == "stream" for d in ducks)) or None,
                   timeout=20, what=f"the goose {final} to use the stream to {ducks}")
        c.wait_for(lambda: all((s := c.status(d)) is not None and final in s.streams_in
                               for d in ducks) or None,
                   timeout=20, what=f"{ducks} to hold {final}'s stream")
        c.wait_for(lambda: len(observer.since(time.monotonic() - 0.5)) == 3 or None,
                   timeout=10, what="a last look at every node")
    finally:
        observer.stop()
    report = check(observer.history(), events, topology,
                   CheckConfig(recovery_bound=3.0, settle_bound=10.0))
    assert not report.violations, "\n".join(v.message for v in report.violations)
    terms = {n: c.status(n).term for n in names}  # type: ignore[union-attr]
    # One election: the old goose's hand-over. A restarted duck or a pre-vote costs none.
    assert set(terms.values()) == {term0 + 1}, (term0, terms)


def new_to_old_http(c: LocalCluster, new: str, goose: str, old: str) -> None:
    """NEW, cut from GOOSE by fault injection, asks OLD (0.2.0) for a pre-vote: the stream is
    refused (404), the request goes as a POST, and OLD, still hearing GOOSE, says no (no
    term changes). Then heal."""
    c.admin(new, "/admin/partition", {"peers": [goose]})
    try:
        c.wait_for(lambda: ((s := c.status(new)) is not None
                   and s.peer_links.get(old) == "http") or None, timeout=15,
                   what=f"{new} to fall back to POSTs to {old}")
    finally:
        c.admin(new, "/admin/heal", {"all": True})
    c.wait_for(lambda: ((s := c.status(new)) is not None and s.goose == goose) or None,
               timeout=15, what=f"{new} to follow {goose} again")
