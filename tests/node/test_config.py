"""Validation of Timing and NodeConfig: every bad setting is a ConfigError naming the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ddg.election.names import check_name
from ddg.election.timing import (
    TIMINGS,
    JointTiming,
    Reconciled,
    Timing,
    TimingRecord,
    parse_timeout_range,
    reconcile,
)
from ddg.errors import ConfigError, RegistryDataError
from ddg.node.config import NodeConfig, default_data_dir
from ddg.registry.redisconn import check_redis_url


def test_default_timing() -> None:
    t = Timing()
    assert (t.heartbeat, t.election_min, t.election_max) == (0.05, 0.15, 0.3)
    assert t.lease == pytest.approx(0.08)  # a heartbeat and a fifth of election_min
    assert t.quorum_timeout == pytest.approx(0.12)
    assert t.lease_wait == pytest.approx(0.1)
    # the margins the lease relies on: covered by stickiness and by the wait after hearing it
    assert t.lease <= t.quorum_timeout < t.election_min
    assert t.lease_wait <= t.election_min


def test_fast_timing_preset_is_valid_and_faster() -> None:
    fast, default = TIMINGS["fast"], TIMINGS["default"]
    assert fast.lease_wait < default.lease_wait / 2 and fast.heartbeat < fast.lease
    assert default == Timing()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"heartbeat_ms": 0}, "heartbeat must be"),
    ({"heartbeat_ms": 60_001}, "heartbeat must be"),
    ({"election_timeout_min_ms": 0}, "election timeout must be"),
    ({"election_timeout_min_ms": 400, "election_timeout_max_ms": 300}, "election timeout"),
    ({"election_timeout_max_ms": 600_001}, "election timeout must be"),
    ({"election_timeout_min_ms": 99, "election_timeout_max_ms": 300}, "at least twice"),
    ({"drift_margin": 1.0}, "drift margin"),
    ({"drift_margin": 1.5}, "drift margin"),
    ({"drift_margin": 0.05}, "drift margin"),
    ({"drift_margin": -0.8}, "drift margin"),
    ({"lease_ms": 50}, "lease must be longer than the heartbeat"),
    ({"lease_ms": 121}, "at most the minimum election timeout x 0.8"),
])
def test_bad_timing_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Timing(**kwargs)


def test_edge_timings_are_accepted() -> None:
    t = Timing(heartbeat_ms=1, election_timeout_min_ms=2, election_timeout_max_ms=2,
               drift_margin=0.1)
    assert t.lease == pytest.approx(0.0002)
    Timing(heartbeat_ms=100, election_timeout_min_ms=200, election_timeout_max_ms=200,
           drift_margin=0.99)


def test_timing_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Timing().heartbeat_ms = 5  # type: ignore[misc]


@pytest.mark.parametrize(("text", "expected"), [
    ("150-300", (150, 300)), ("200", (200, 200)), (" 150-300", (150, 300)),
])
def test_parse_timeout_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_timeout_range(text) == expected


@pytest.mark.parametrize("text", ["", "a-b", "150-", "1-2-3", "150..300", "-300"])
def test_parse_timeout_range_refuses_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match="MIN-MAX"):
        parse_timeout_range(text)


@pytest.mark.parametrize("name", [
    "", "-a", "_a", "a b", "a/b", "a" * 64, "ä",
    "a\n",  # a trailing newline once slipped through match() with $
])
def test_bad_names(name: str) -> None:
    with pytest.raises(ConfigError, match="is not valid"):
        check_name("node name", name)


@pytest.mark.parametrize("name", ["a", "n1", "A.b-c_d", "9" * 63])
def test_good_names(name: str) -> None:
    assert check_name("node name", name) == name


def test_redis_urls() -> None:
    for url in ("redis://h:1/0", "rediss://h", "unix:///tmp/r.sock"):
        assert check_redis_url(url) == url
    for url in ("http://h", "h:6379", ""):
        with pytest.raises(ConfigError, match="must start with"):
            check_redis_url(url)


def _config(**kwargs: Any) -> NodeConfig:
    base: dict[str, Any] = {"name": "n1", "port": 8001, "data_dir": Path("/tmp/ddg-test")}
    return NodeConfig(**(base | kwargs))


def test_node_config_defaults_and_address() -> None:
    c = _config()
    assert c.address == "http://127.0.0.1:8001"
    assert _config(host="::1").address == "http://[::1]:8001"
    assert c.timing == Timing()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "bad name"}, "node name"),
    ({"cluster": "-x"}, "cluster name"),
    ({"redis_url": "mysql://x"}, "redis URL"),
    ({"port": 0}, "port must be"),
    ({"port": 65536}, "port must be"),
    ({"host": ""}, "host must not be empty"),
    ({"secret": b"short"}, "at least 8 bytes"),
    ({"log_level": "verbose"}, "log level"),
    ({"refresh_interval": 0.01}, "refresh interval"),
    ({"refresh_interval": 61}, "refresh interval"),
])
def test_bad_node_config_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(**kwargs)


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        _config(port=-1)


def test_log_level_is_case_insensitive_and_secret_may_be_long() -> None:
    assert _config(log_level="debug", secret=b"x" * 8).log_level == "debug"


def test_default_data_dir_uses_xdg_state_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/x/state")
    assert default_data_dir("c", "n") == Path("/x/state/ddg/c/n")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert default_data_dir("c", "n") == Path("/home/u/.local/state/ddg/c/n")


# ---- timing as cluster state: the record and the joint timing (pure) ----------------------

DEFAULT, FAST = TIMINGS["default"], TIMINGS["fast"]


def test_a_resolved_timing_writes_its_lease_out_and_keeps_its_values() -> None:
    d = DEFAULT.resolved()
    assert d.lease_ms == 80 and d.lease == DEFAULT.lease and d.resolved() is d
    assert Timing(heartbeat_ms=15, election_timeout_min_ms=61,
                  election_timeout_max_ms=100).resolved().lease_ms == 27.2
    assert (DEFAULT.label, FAST.label, d.label) == ("default", "fast", "default")
    assert Timing(lease_ms=100).label == "heartbeat 50 ms, election 150-300 ms, lease 100 ms"


def test_the_joint_timing_is_the_conservative_combination() -> None:
    j = JointTiming.of([DEFAULT, FAST])
    assert (j.heartbeat, j.election_min, j.election_max) == (0.015, 0.15, 0.3)
    assert j.lease == pytest.approx(0.03)  # the shortest lease a goose may hold
    assert j.lease_wait == pytest.approx(0.1)  # the longest wait any lease may need
    assert j.quorum_timeout == pytest.approx(0.12)
    assert j.hint_step == FAST.hint_step and j.drift_margin == 0.8
    assert j.label == "default + fast"
    one = JointTiming.of([FAST])
    for name in ("heartbeat", "election_min", "election_max", "lease", "lease_wait",
                 "quorum_timeout", "hint_step", "drift_margin"):
        assert getattr(one, name) == pytest.approx(getattr(FAST, name)), name


def test_joint_timings_that_share_a_timing_keep_the_lease_argument() -> None:
    """docs/design.md: a goose on set S1 and a voter or new goose on S2 with S1 and S2 sharing
    a timing x: L(S1) <= L(x) <= margin x Tmin(x) <= margin x Tmin(S2), and
    L(S1) <= L(x) <= margin x W(S2)."""
    pool = [DEFAULT, FAST, Timing(lease_ms=120), Timing(heartbeat_ms=100,
            election_timeout_min_ms=1000, election_timeout_max_ms=1200, lease_ms=600),
            Timing(heartbeat_ms=30, election_timeout_min_ms=100, election_timeout_max_ms=250)]
    sets = [[a] for a in pool] + [[a, b] for a in pool for b in pool if a != b] + [pool]
    for s1 in sets:
        for s2 in sets:
            if not {t.resolved() for t in s1} & {t.resolved() for t in s2}:
                continue
            a, b = JointTiming.of(s1), JointTiming.of(s2)
            assert a.lease <= 0.8 * b.election_min + 1e-12, (s1, s2)
            assert a.lease <= 0.8 * b.lease_wait + 1e-12, (s1, s2)
            assert a.heartbeat <= b.election_min / 2, (s1, s2)


def test_the_record_is_canonical_json_and_parsed_strictly() -> None:
    rec = TimingRecord(2, (FAST, DEFAULT), FAST)
    text = rec.to_json()
    assert text == TimingRecord(2, (DEFAULT, FAST, DEFAULT.resolved()), FAST).to_json()
    assert TimingRecord.from_json(text) == rec and rec.changing
    assert rec.fingerprint.startswith("2:") and len(rec.fingerprint) == 18
    assert rec.fingerprint != TimingRecord(2, (FAST, Timing(lease_ms=100)), FAST).fingerprint
    assert '"lease_ms":80' in text and rec.joint == JointTiming.of([DEFAULT, FAST])
    for bad in ["nope", "[]", '{"epoch": 1}',
                text.replace('"epoch":2', '"epoch":0'),
                text.replace('"epoch":2', '"epoch":true'),
                text.replace('"lease_ms":80', '"lease_ms":"80"'),
                text.replace('"lease_ms":80', '"lease_ms":500'),
                text.replace('"heartbeat_ms":50', '"heartbeat_ms":50.5'),
                text.replace('"drift_margin":0.8', '"drift_margin":1.5'),
                json.dumps({"epoch": 1, "timings": [DEFAULT.to_json()],
                            "target": FAST.to_json()}),
                json.dumps({"epoch": 1, "timings": [DEFAULT.to_json()] * 9,
                            "target": DEFAULT.to_json()}),
                json.dumps({"epoch": 1, "timings": [{**DEFAULT.to_json(), "x": 1}],
                            "target": DEFAULT.to_json()})]:
        with pytest.raises(RegistryDataError):
            TimingRecord.from_json(bad)


def test_a_change_joins_a_finalize_leaves_the_target_alone() -> None:
    rec = TimingRecord.first(DEFAULT)
    changed = rec.changed_to(FAST)
    assert (changed.epoch, changed.timings, changed.target) == (
        2, (DEFAULT.resolved(), FAST.resolved()), FAST.resolved())
    again = changed.changed_to(Timing(lease_ms=100))  # a change during a change: union
    assert again.epoch == 3 and len(again.timings) == 3 and again.shares([DEFAULT])
    assert again.finalized() == TimingRecord(4, (Timing(lease_ms=100),), Timing(lease_ms=100))
    assert changed.describe() == "changing to fast from default (epoch 2)"
    assert changed.finalized().describe() == "fast (epoch 3)"


def test_reconcile_adopts_newer_records_restores_older_and_merges_forks() -> None:
    d1 = TimingRecord.first(DEFAULT)
    d2 = d1.changed_to(FAST)
    f3 = d2.finalized()
    # newer and sharing a timing: adopt
    assert reconcile(d1, d2, d1.timings) == Reconciled(adopt=d2)
    assert reconcile(d2, f3, d2.timings) == Reconciled(adopt=f3)
    # the registry lost it, or went back in time: put ours back
    assert reconcile(f3, None, f3.timings).write == f3
    step = reconcile(f3, d2, f3.timings)
    assert step.write == f3 and step.adopt is None
    # the same epoch with other timings (a forked history): both, as one change, newer
    fork = TimingRecord(3, (Timing(lease_ms=100),), Timing(lease_ms=100))
    step = reconcile(f3, fork, f3.timings)
    assert step.adopt == step.write and step.write is not None
    assert step.write.epoch == 4 and set(step.write.timings) == {FAST.resolved(),
                                                                  Timing(lease_ms=100)}
    # newer but sharing nothing with what this node runs: never run it, merge it
    step = reconcile(d1, f3, d1.timings)
    assert step.write is not None and step.write.epoch == 4 and step.write.shares([DEFAULT])
    assert step.write.target == FAST.resolved()
    # a node without a record (a cluster from an older version) runs its flags
    assert reconcile(None, d1, [DEFAULT]) == Reconciled(adopt=d1)
    assert reconcile(None, f3, [DEFAULT]).write == f3.merged([DEFAULT], 3)
    assert reconcile(None, None, [DEFAULT]) == Reconciled()
    assert reconcile(f3, f3, f3.timings) == Reconciled()
