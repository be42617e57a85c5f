"""GET /metrics: Prometheus conventions, the right counters moving on the right real nodes
through a failover, and the example alerting rules in docs/alerts.yml."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ddg import __version__
from ddg.client import NodeStatus, RedisInfo, Role
from ddg.election.core import Counters, StepDown
from ddg.errors import ClusterMismatch, RegistryAuthError, RegistryDataError, RegistryUnavailable
from ddg.local.tools import Tool
from ddg.node.peers import failure_reason
from ddg.ops.changes import Changes, View
from ddg.ops.metrics import NodeMetrics
from ddg_testkit import LocalCluster, tools

Make = Callable[..., LocalCluster]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ALERTS = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of NAME whose labels include LABELS."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def unit_metrics(members: tuple[str, ...] = ("n1", "n2", "n3")) -> tuple[NodeMetrics, Changes]:
    """A NodeMetrics of node n1 over a fixed status, wired to a real change feed."""
    status = NodeStatus(name="n1", role=Role.DUCK, term=3, goose="n2", cluster="c",
                        members=members, quorum=2, membership_version=4,
                        heartbeat_age_ms=12.0, redis=RedisInfo(connected=True))
    counters = Counters(elections_started=2, elections_won=1, heartbeats_received=7)
    counters.stepped_down(StepDown.HIGHER_TERM)
    metrics = NodeMetrics(name="n1", status=lambda: status, counters=lambda: counters)
    changes = Changes()
    changes.listen(metrics.observe)
    changes.observe(View(role=Role.DUCK, state="duck", term=3, goose="n2", members=members,
                         version=4), at=1.0, wall=1.0)
    return metrics, changes


# ---- unit: names, labels, cardinality -----------------------------------------------------

def test_names_follow_prometheus_conventions() -> None:
    metrics, _ = unit_metrics()
    metrics.heartbeat_round_trip("n2", 0.002)
    metrics.fsync_took(0.001)
    metrics.peer_failed("n3", "refused")
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    names = {f.name for f in families}
    for fam in families:
        assert re.fullmatch(r"ddg_[a-z0-9_]+", fam.name), fam.name
        for s in fam.samples:
            assert all(re.fullmatch(r"[a-z_]+", label) for label in s.labels), s
            if fam.type == "counter":
                assert s.name.endswith("_total"), s.name
            else:
                assert not s.name.endswith("_total"), s.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name  # base units
        assert not re.search(r"_(ms|milliseconds|minutes)(_|$)", fam.name), fam.name
    assert {"ddg_is_goose", "ddg_term", "ddg_members", "ddg_quorum", "ddg_membership_version",
            "ddg_lease_remaining_seconds", "ddg_goose_heartbeat_age_seconds",
            "ddg_redis_connected", "ddg_elections_started", "ddg_elections_won",
            "ddg_pre_votes_started", "ddg_pre_votes_won", "ddg_step_downs",
            "ddg_heartbeats_sent", "ddg_heartbeats_received", "ddg_peer_message_failures",
            "ddg_heartbeat_round_trip_seconds", "ddg_registry_errors",
            "ddg_fsync_duration_seconds", "ddg_process_start_time_seconds",
            "ddg_build_info", "ddg_node_info"} <= names
    s = parse(generate_latest(metrics.registry).decode())
    assert value(s, "ddg_term") == 3 and value(s, "ddg_is_goose") == 0
    assert value(s, "ddg_goose_heartbeat_age_seconds") == pytest.approx(0.012)
    assert value(s, "ddg_step_downs_total", reason="higher_term") == 1
    assert value(s, "ddg_step_downs_total", reason="lost_quorum") == 0
    assert value(s, "ddg_peer_message_failures_total", peer="n3", reason="refused") == 1
    assert value(s, "ddg_heartbeat_round_trip_seconds_count", peer="n2") == 1
    assert {k for k in ("unavailable", "data", "auth", "mismatch")
            if ("ddg_registry_errors_total", frozenset({("kind", k)})) in s} == {
        "unavailable", "data", "auth", "mismatch"}


def test_a_node_that_has_not_joined_counts_as_without_a_goose() -> None:
    """From its start: a node waiting to join a cluster that was never created has no goose,
    and the alerts on the gap must see it (it has no change feed yet)."""
    now = [100.0]
    status = NodeStatus(name="n1", role=Role.DUCK, term=0, goose=None, cluster="c")
    metrics = NodeMetrics(name="n1", status=lambda: status, counters=lambda: None,
                          clock=lambda: now[0])
    now[0] = 125.0
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "ddg_goose_gap_seconds") == 25.0
    assert value(samples, "ddg_no_goose_seconds_total") == 25.0


def test_a_peer_that_leaves_takes_its_series_with_it() -> None:
    metrics, changes = unit_metrics()
    metrics.peer_failed("n3", "timeout")
    metrics.heartbeat_round_trip("n3", 0.001)
    changes.observe(View(role=Role.DUCK, state="duck", term=3, goose="n2", members=("n1", "n2"),
                         version=5), at=2.0, wall=2.0)
    metrics.peer_failed("n3", "timeout")  # a send still in flight when n3 left
    metrics.peer_failed("stranger", "timeout")  # never a member: no series for it
    s = parse(generate_latest(metrics.registry).decode())
    peers = {dict(labels).get("peer") for (_, labels) in s} - {None}
    assert peers == {"n2"}


def test_registry_errors_are_counted_by_kind() -> None:
    metrics, _ = unit_metrics()
    for exc in (RegistryUnavailable("down"), RegistryUnavailable("down"),
                RegistryAuthError("no"), ClusterMismatch("other"), RegistryDataError("bad")):
        metrics.registry_error(exc)
    s = parse(generate_latest(metrics.registry).decode())
    assert {k: value(s, "ddg_registry_errors_total", kind=k)
            for k in ("unavailable", "auth", "mismatch", "data")} == {
        "unavailable": 2, "auth": 1, "mismatch": 1, "data": 1}


async def test_peer_failure_reasons() -> None:
    assert [failure_reason(c) for c in (401, 404, 500, 503, 302)] == [
        "http_4xx", "http_4xx", "http_5xx", "http_5xx", "other"]
    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(ValueError("bad json")) == "other"
    # a real refused connection: a loopback port nobody listens on
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError) as refused:
            await session.post(f"http://127.0.0.1:{port}/raft/heartbeat")
    assert failure_reason(refused.value) == "refused"


# ---- real nodes ---------------------------------------------------------------------------

def scrape(c: LocalCluster, name: str) -> Samples:
    resp = httpx.get(c.address(name) + "/metrics", timeout=2.0)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


@pytest.mark.integration
def test_failover_moves_the_right_counters_on_the_right_nodes(make_cluster: Make) -> None:
    c = make_cluster()
    names = c.start(3)
    old = c.wait_followed(names, timeout=13)
    ducks = [n for n in names if n != old]
    before = {n: scrape(c, n) for n in names}
    assert value(before[old], "ddg_is_goose") == 1
    assert all(value(before[d], "ddg_is_goose") == 0 for d in ducks)
    assert value(before[old], "ddg_members") == 3 and value(before[old], "ddg_quorum") == 2
    assert value(before[old], "ddg_lease_remaining_seconds") > 0
    old_term = value(before[old], "ddg_term")

    c.kill(old)
    c.wait(old, 5)
    new = c.wait_followed(ducks, timeout=13)
    [other] = [d for d in ducks if d != new]
    term = c.wait_for(lambda: (s := c.status(other)) and s.goose == new and s.term,
                      timeout=3, what=f"{other} follows {new}")

    def moved() -> tuple[Samples, Samples] | None:
        a, b = scrape(c, new), scrape(c, other)
        ok = (value(a, "ddg_is_goose") == 1 and value(b, "ddg_term") == term
              and value(b, "ddg_heartbeats_received_total")
              > value(before[other], "ddg_heartbeats_received_total")
              and total(a, "ddg_peer_message_failures_total", peer=old) > 0
              and value(a, "ddg_heartbeat_round_trip_seconds_count", peer=other) > 0)
        return (a, b) if ok else None

    after_new, after_other = c.wait_for(moved, timeout=5, what="the metrics show the failover")
    # the new goose: one election won, the goose now, in the new term
    assert value(after_new, "ddg_elections_won_total") == (
        value(before[new], "ddg_elections_won_total") + 1)
    assert value(after_new, "ddg_term") == term > old_term
    assert value(after_new, "ddg_lease_remaining_seconds") > 0
    assert value(after_new, "ddg_heartbeats_sent_total") > value(before[new],
                                                                  "ddg_heartbeats_sent_total")
    assert value(after_new, "ddg_pre_votes_won_total") > value(before[new],
                                                                "ddg_pre_votes_won_total")
    assert value(after_new, "ddg_fsync_duration_seconds_count") > value(
        before[new], "ddg_fsync_duration_seconds_count")  # the new term went to disk
    # the other survivor: still a duck, no election won, following the new goose
    assert value(after_other, "ddg_is_goose") == 0
    assert value(after_other, "ddg_elections_won_total") == value(before[other],
                                                                  "ddg_elections_won_total")
    assert value(after_other, "ddg_goose_heartbeat_age_seconds") < 1
    for n, after in ((new, after_new), (other, after_other)):
        assert value(after, "ddg_no_goose_seconds_total") > value(before[n],
                                                                  "ddg_no_goose_seconds_total")
        assert value(after, "ddg_redis_connected") == 1
        assert total(after, "ddg_step_downs_total") == 0
        assert value(after, "ddg_process_start_time_seconds") > 0
        assert [dict(ls)["version"] for (name, ls) in after if name == "ddg_build_info"] == [
            __version__]
    if isinstance(promtool := tools.optional(tools.promtool), Tool):
        text = httpx.get(c.address(new) + "/metrics").text
        lint = subprocess.run([promtool.path, "check", "metrics"], input=text, text=True,
                              capture_output=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr

    # the dead node leaves the membership: its peer series go with it
    assert c.remove(old).returncode == 0
    c.wait_for(lambda: not any(dict(labels).get("peer") == old for (_, labels) in scrape(c, new))
               and value(scrape(c, new), "ddg_members") == 2,
               timeout=5, what=f"{new} drops the series of {old}")


# ---- docs/alerts.yml ----------------------------------------------------------------------

def exported_names() -> set[str]:
    """Every sample name a node can export (histogram and counter suffixes included)."""
    metrics, _ = unit_metrics()
    metrics.heartbeat_round_trip("n2", 0.001)
    metrics.fsync_took(0.001)
    return {name for (name, _) in parse(generate_latest(metrics.registry).decode())}


def test_alert_rules_use_only_exported_metrics() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    exported = exported_names()
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {"DdgNoGoose", "DdgTwoGeese", "DdgRedisDown", "DdgElectionChurn"} <= {
        r["alert"] for r in alerts}
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("page", "warning") and rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
        used = set(re.findall(r"\bddg_[a-z0-9_]+", rule["expr"]))
        assert used or "up{" in rule["expr"], rule["alert"]  # ddg_ metrics, or the scrape's
        assert used <= exported, (rule["alert"], used - exported)
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


@pytest.mark.integration
def test_alert_rules_pass_promtool() -> None:
    promtool = tools.optional(tools.promtool)  # PROMTOOL, else promtool on PATH
    if isinstance(promtool, str):
        pytest.skip(promtool)
    check = subprocess.run([promtool.path, "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
