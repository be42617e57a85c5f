"""The multi-host bed: a network namespace per node, joined by a bridge in a switch namespace
(ddg_testkit.hosts), judged by the fault harness's observer and checker (ddg_faults.bed).

Root only (ip netns, veth, bridge), skipped with the reason otherwise. About 100 s in all: 64 s
of it the impaired-links window, about 12 s the Sentinel failover.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ddg.client import Role
from ddg.registry.redisconn import RedisOptions, sync_client
from ddg_faults.bed import BedHarness, secured
from ddg_faults.bed_scenarios import impaired_quiet, link_failover, sentinel_failover
from ddg_faults.harness import Harness, HarnessConfig, Outcome, RunConfig, ScenarioFailed
from ddg_testkit import hosts, tools
from ddg_testkit.hosts import CLIENT, Bed, BedConfig, Impairment

pytestmark = pytest.mark.faults
QUIET_SECONDS = 60.0  # the window
# The impaired window's election timeout: "well under" it the delay must be (the issue's
# words), with room for this VM's stalls. At the default 150-300 ms (check-quorum 120 ms,
# ~50 ms of slack at a 12-28 ms round trip) 4 of 14 runs with the machine to themselves (one
# in CI) saw one election, where probed at a stall of the whole VM (every node's probe thread
# late by 16-80 ms at once). At 300-600 ms (lease 110 ms, check-quorum 240 ms) 6 of 6
# passed, one through an 87 ms stall. docs/faults.md has the records.
IMPAIRED_TIMEOUT_MS = "300-600"


def _ours() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    # This process's beds only: other test runs on the machine make and delete their own.
    return [ln for ln in out.stdout.splitlines()
            if ln.startswith(f"{hosts.PREFIX}{os.getpid()}-")]


@pytest.fixture
def bed_ready() -> Iterator[None]:
    reason = hosts.missing_prerequisites()
    if reason is not None:
        pytest.skip(f"multi-host bed not possible here: {reason}")
    before = set(_ours())
    yield
    left = set(_ours()) - before
    assert not left, f"namespaces left behind: {left}"


def run_scenario(scenario: Callable[[Harness, RunConfig], None], cfg: RunConfig,
                 bed: BedConfig | None = None, *, late: int = 0) -> tuple[Outcome, list[str]]:
    h = BedHarness(HarnessConfig(nodes=bed.nodes if bed else 5, late=late), bed)
    started = time.monotonic()
    try:
        h.start()
        scenario(h, cfg)
    except ScenarioFailed as exc:
        h.fail(f"{exc}\n{h.cluster.describe()}")
    try:
        outcome = h.finish("bed", started)
        if not outcome.ok:  # the nodes' own account, before close() deletes their logs
            outcome.failures.append(h.cluster.describe(lines=120))
    finally:
        h.close()
    return outcome, h.notes


def verdict(o: Outcome) -> str:
    return "\n".join([*(f"{v.rule}: {v.message}\n{tl}" for v, tl in
                        zip(o.report.violations, o.report.timelines, strict=True)),
                      *o.failures, *o.crashes])


@pytest.mark.parametrize("security", ["hmac", "mtls+hmac+acl"])
def test_link_failover_across_hosts(bed_ready: None, security: str, tmp_path: Path) -> None:
    """5 hosts: one goose; its link down, another takes over; back, it is a duck. Plain, and
    with HTTPS + mutual TLS + the secret + an ACL Redis user."""
    bed = secured(tmp_path, BedConfig(nodes=5)) if security != "hmac" else None
    outcome, notes = run_scenario(link_failover, RunConfig(), bed)
    assert outcome.ok, verdict(outcome)
    # One fault, one election from it to the end (the rejoin costs none). Not "one failover in
    # the run": on a busy machine (two test workers) a lease may lapse before the fault.
    assert outcome.report.figures.faults == 1
    assert outcome.report.figures.elections_per_fault == [1], outcome.report.figures
    assert any("rejoined as a duck" in n for n in notes), notes
    # Secured, the observer only ever read the nodes at https:// (verifying their certificates
    # against the test's CA), and the nodes only ever had the ACL user for Redis.
    assert bed is None or bed.scheme == "https"


def test_sentinel_failover_across_hosts_moves_nothing(bed_ready: None, tmp_path: Path) -> None:
    """Master, replica and 3 sentinels on hosts of their own; 5 nodes secured as operators run
    them (HTTPS + mutual TLS + secret + the least-ACL user, on the sentinels too) with the
    redis+sentinel://ddg:PASSWORD@s1:26379,.../MASTER/0 URL. SIGKILL the master: the replica is
    promoted, every node reconnects to it by itself (its address in the new master's CLIENT
    LIST, `redis.connected` on /status), the goose and the term do not move in any answer the
    observer got; then a sixth node joins and `ddg-node remove` takes a duck out."""
    bed = replace(secured(tmp_path, BedConfig(nodes=6, sentinels=3)), down_after_ms=300,
                  failover_timeout_ms=1000)
    started = time.monotonic()
    outcome, notes = run_scenario(sentinel_failover, RunConfig(), bed, late=1)
    print(f"\n{chr(10).join(notes)}\n(whole test: {time.monotonic() - started:.1f} s)")
    assert outcome.ok, verdict(outcome)
    assert outcome.report.figures.fault_kinds == {"kill-master": 1}
    assert outcome.report.figures.elections_per_fault == [0], outcome.report.figures
    assert any("Sentinel failovers" in n for n in notes) and any("removed" in n for n in notes)


@pytest.mark.alone  # beside two other workers' tests, n5 missed heartbeats and campaigned
@pytest.mark.timeout(QUIET_SECONDS + 60)
def test_impaired_links_cause_no_election(bed_ready: None) -> None:
    """5 ± 2 ms delay and 1 % loss on every link, both ways, for 60 s, at an election timeout
    of IMPAIRED_TIMEOUT_MS: no new term, no other goose, no checker violation, the goose's
    lease lapsing in at most 5 % of its answers. About 66 s on a quiet 2-core machine; it
    needs one (docs/faults.md: other clusters on the same cores slow the nodes past the
    timing's margin)."""
    outcome, notes = run_scenario(impaired_quiet, RunConfig(seconds=QUIET_SECONDS),
                                  BedConfig(election_timeout_ms=IMPAIRED_TIMEOUT_MS))
    print("\n".join(notes))
    assert outcome.ok, verdict(outcome)


def test_status_from_another_namespace_reads_advertised_addresses(bed_ready: None) -> None:
    """Also the Redis URL form with user:password, passed through to nodes and CLI alike."""
    acl = BedConfig(nodes=3, redis_args=("--requirepass", "bed-pw"),
                    redis_userinfo="default:bed-pw")
    with Bed(acl) as bed:
        assert "default:bed-pw@" in bed.redis_url
        goose = bed.cluster.wait_followed(timeout=25)
        proc = bed.run(CLIENT, [sys.executable, "-m", "ddg", "status", "--json",
                                "--redis-url", bed.redis_url, "--cluster", bed.cluster.cluster])
        assert proc.returncode == 0, proc.stderr
        members = json.loads(proc.stdout)["members"]
        assert sorted(members) == bed.names
        for name, st in members.items():
            assert st.get("address") == bed.url(name), st
            assert st.get("goose") == goose, st
        table = bed.run(CLIENT, [sys.executable, "-m", "ddg", "status", "--redis-url",
                                 bed.redis_url])
        assert table.returncode == 0 and bed.url("n1") in table.stdout, table.stdout


def test_wildcard_bind_with_advertise_url_is_reached_from_other_hosts(bed_ready: None) -> None:
    """--host 0.0.0.0 with --advertise-url (its one-line refusal without one is in
    tests/net/test_hostile_peers.py): peers on other hosts reach it there, and it follows the
    goose."""
    bed = Bed(BedConfig(nodes=3))
    bed.start(nodes=["n1", "n2"])
    try:
        bed.add("n3", bind="0.0.0.0")
        assert bed.cluster.spec("n3").host == "0.0.0.0"
        bed.cluster.wait_for(lambda: (st := bed.cluster.status("n3")) is not None
                             and len(st.members) == 3, timeout=15, what="n3 to count 3 members")
        goose = bed.cluster.wait_followed(timeout=25)  # n3 among those that follow it
        probe = (f"import urllib.request; print(urllib.request.urlopen({bed.url('n3')!r} + "
                 "'/status', timeout=2).status)")
        for host in ("h1", "h2"):
            peer = bed.run(host, [sys.executable, "-c", probe], timeout=10)
            assert peer.stdout.strip() == "200", peer.stderr
        if goose != "n3":
            assert bed.cluster.role("n3") is Role.DUCK
    finally:
        bed.close()


def _connect_ms(net: hosts.Network, src: str, dst: str, port: int, n: int) -> list[float]:
    """N TCP handshakes from SRC's namespace to DST's listener, each timed (ms, sorted)."""
    with net.entered(dst):
        listener = socket.create_server((net.addresses[dst], port), backlog=n)
    samples = []
    with listener:
        for _ in range(n):
            with net.entered(src):
                client = socket.socket()
            with client:
                t = time.perf_counter()
                client.connect((net.addresses[dst], port))  # returns on the SYN-ACK
                samples.append((time.perf_counter() - t) * 1000)
                listener.accept()[0].close()
    return sorted(samples)


def _spread(ms: list[float]) -> str:
    def q(f: float) -> float:
        return ms[min(len(ms) - 1, int(f * len(ms)))]
    return (f"min {ms[0]:.2f} p10 {q(.1):.2f} median {statistics.median(ms):.2f} "
            f"p90 {q(.9):.2f} max {ms[-1]:.2f} ms (n={len(ms)})")


def test_link_delay_adds_the_round_trip_it_should(bed_ready: None) -> None:
    """5 ± 2 ms each way on a link without netem (NFQUEUE + ddg_testkit.delayer): a handshake
    from the switch gains two holds of 3-7 ms, one between two impaired hosts four; cleared,
    the link is fast again."""
    net = hosts.Network(["h1", "h2"])
    net.build()
    imp = Impairment(delay_ms=5, jitter_ms=2)
    try:
        with net.entered(hosts.SWITCH):
            before = _connect_ms(net, hosts.SWITCH, "h1", 9001, 40)
            net.impair("h1", imp)
            one = _connect_ms(net, hosts.SWITCH, "h1", 9002, 40)
            net.impair("h2", imp)
            two = _connect_ms(net, "h2", "h1", 9003, 20)
            net.impair("h1", None)
            net.impair("h2", None)
            after = _connect_ms(net, hosts.SWITCH, "h1", 9004, 40)
        print(f"\nclean:            {_spread(before)}\n5 ± 2 ms on h1:   {_spread(one)}"
              f"\nh2 -> h1, both:   {_spread(two)}\ncleared:          {_spread(after)}\n"
              + "\n".join(net.delayer_reports))
        base = statistics.median(before)
        # Each packet is held 3-7 ms (never less); a few ms over for a loaded machine.
        assert one[0] >= 6 and 8 <= statistics.median(one) - base <= 13, _spread(one)
        assert two[0] >= 12 and 16 <= statistics.median(two) - base <= 25, _spread(two)
        assert statistics.median(after) < base + 2, _spread(after)
        assert not net.impaired and len(net.delayer_reports) == 2
    finally:
        net.close()


def test_impairment_needs_a_sane_spec() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Impairment(delay_ms=1, jitter_ms=2)
    with pytest.raises(ValueError, match="loss"):
        Impairment(loss_pct=101)
    assert Impairment(delay_ms=5, jitter_ms=2, loss_pct=1).describe() == \
        "delay 5ms 2ms loss 1%"


@pytest.mark.parametrize("setup", ["plain", "acl", "sentinel"])
def test_the_bed_redis_serves_other_hosts_on_a_system_redis_server(
        bed_ready: None, setup: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bed's Redis (one server, plain or with the nodes' ACL user; or Sentinel's master and
    replica) bound to its host's address and run by a system redis-server: Redis 7 (Debian's,
    ddg_testkit.tools.system_redis_server) first on PATH and asked for (DDG_REDIS_SERVER=system),
    as on a machine with Debian's redis-server package. It starts, and a client on another
    host writes and reads there. (It used to time out: protected mode answered -DENIED.)"""
    system = tools.optional(tools.system_redis_server)
    if isinstance(system, str):
        pytest.skip(f"no system redis-server: {system}")
    link = tools.linked(system, tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{link.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("DDG_REDIS_SERVER", "system")
    config = BedConfig(nodes=1, sentinels=1 if setup == "sentinel" else 0)
    bed = Bed(secured(tmp_path, config) if setup == "acl" else config)
    bed.start(nodes=[])
    try:
        # this thread is on the switch, another host than Redis's
        with sync_client(RedisOptions(url=bed.redis_url), timeout=5) as client:
            client.set("ddg:bed:probe", setup)
            assert client.get("ddg:bed:probe") == setup.encode()
        pids = ([s.proc.pid for k, s in bed.sentinel.servers.items() if k in "ab"]
                if setup == "sentinel" else [bed.cluster.redis_pid])
        for pid in pids:
            assert pid is not None
            assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(system.path)
    finally:
        bed.close()
