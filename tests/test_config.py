"""Validation of Timing and NodeConfig: every bad setting is a ConfigError naming the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ddg.config import (
    TIMINGS,
    NodeConfig,
    Timing,
    check_name,
    default_data_dir,
    parse_timeout_range,
)
from ddg.errors import ConfigError
from ddg.redisconn import check_redis_url


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
