"""--log-format json: one object per line with stable event names; text logs as they were."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest

from ddg.cli.node import config_from_args, run_parser
from ddg.errors import ConfigError
from ddg.ops.logs import JsonFormatter, rfc3339
from ddg_testkit import LocalCluster

Make = Callable[..., LocalCluster]
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
KEYS = {"ts", "level", "logger", "node", "cluster", "event", "msg"}
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)"
                       r" +\[(?P<node>[\w.-]+)\] (?P<logger>[\w.]+): ")


def record(msg: str, *args: object, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("ddg.node", logging.INFO, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    rec.created = 1714564800.123456  # 2024-05-01T12:00:00.123Z
    return rec


def test_json_lines_carry_the_event_its_fields_and_the_term() -> None:
    fmt = JsonFormatter(node="n1", cluster="c", term=lambda: 7)
    line = fmt.format(record("won term %d with %d/%d votes", 8, 2, 3, event="elected", term=8,
                             votes=2, members=3))
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "ddg.node", "node": "n1",
        "cluster": "c", "event": "elected", "term": 8, "msg": "won term 8 with 2/3 votes",
        "votes": 2, "members": 3}
    # a line without an event of its own: `log`, and the node's term
    plain = json.loads(fmt.format(record("something\non two lines", exc=True)))
    assert plain["event"] == "log" and plain["term"] == 7 and plain["msg"].endswith("two lines")
    assert "RuntimeError: boom" in plain["exc"]
    # no term known yet (the node has not joined): no `term` key
    assert "term" not in json.loads(JsonFormatter(node="n1", cluster="c").format(record("x")))
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"


def test_log_format_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    assert config_from_args(run_parser().parse_args(["--port", "4001"])).log_format == "text"
    monkeypatch.setenv("DDG_LOG_FORMAT", "json")
    assert config_from_args(run_parser().parse_args(["--port", "4001"])).log_format == "json"
    assert config_from_args(run_parser().parse_args(
        ["--port", "4001", "--log-format", "text"])).log_format == "text"
    monkeypatch.setenv("DDG_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="log format 'xml' must be text or json"):
        config_from_args(run_parser().parse_args(["--port", "4001"]))


def read_json_log(c: LocalCluster, name: str) -> list[dict[str, Any]]:
    lines = [ln for ln in c.log_path(name).read_text().splitlines() if ln.strip()]
    assert lines, f"{name} logged nothing"
    out = []
    for ln in lines:
        obj = json.loads(ln)  # every line is one JSON object
        assert isinstance(obj, dict) and KEYS <= set(obj), ln
        assert TS.fullmatch(obj["ts"]) and obj["node"] == name and obj["cluster"] == c.cluster
        out.append(obj)
    return out


@pytest.mark.integration
def test_a_real_node_logs_json_with_stable_events(make_cluster: Make) -> None:
    c = make_cluster()
    name = c.add(extra_args=["--log-format", "json"]).name
    c.wait_goose()
    term = c.status(name).term
    assert c.stop(name) == 0
    events = read_json_log(c, name)
    by_name = {e["event"]: e for e in events}
    assert {"started", "redis_up", "campaign", "elected", "stopping", "stopped"} <= set(by_name)
    assert by_name["elected"]["term"] == term and by_name["elected"]["votes"] == 1
    assert by_name["elected"]["msg"] == f"won term {term} with 1/1 votes"
    assert by_name["stopped"]["exit_code"] == 0
    started = events.index(by_name["started"])
    assert all("term" in e for e in events[started:]), "once joined, every line has the term"


@pytest.mark.integration
def test_text_logs_stay_as_they_were(make_cluster: Make) -> None:
    c = make_cluster()
    name = c.add().name
    c.wait_goose()
    assert c.stop(name) == 0
    lines = [ln for ln in c.log_path(name).read_text().splitlines() if ln.strip()]
    assert all((m := TEXT_LINE.match(ln)) and m["node"] == name for ln in lines), lines
    assert any(ln.endswith("ddg.node: won term 1 with 1/1 votes") for ln in lines), lines
