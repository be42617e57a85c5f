"""docs/alerts.yml evaluated by a real Prometheus server scraping real nodes: the rules fire on
what real scenarios produce (a dead member, every node dead, a cluster that was never created)
and stay quiet on a healthy cluster. Skipped without a `prometheus` binary (Debian's
`prometheus` package; ./dev test installs it)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ddg.local.embedded import free_port
from ddg.local.tools import Tool
from ddg_testkit import LocalCluster, tools, wait_until

Make = Callable[..., LocalCluster]
ALERTS = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"
pytestmark = pytest.mark.integration


class Prometheus:
    """A Prometheus server on loopback that scrapes TARGETS as the job `ddg` every second and
    evaluates docs/alerts.yml every second."""

    def __init__(self, tool: Tool, base: Path, targets: list[str]) -> None:
        self.port = free_port("127.0.0.1")
        config = base / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "ddg",
                                "static_configs": [{"targets": targets}]}]}))
        self.log = (base / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [tool.path, f"--config.file={config}", f"--storage.tsdb.path={base / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: str) -> Any:
        try:
            r = httpx.get(self.url + path, params=params, timeout=2)
        except httpx.HTTPError:
            return None
        return r.json()["data"] if r.status_code == 200 else None

    def alerts(self) -> dict[str, list[dict[str, Any]]]:
        """Active alerts (pending: the expression holds; firing: for long enough) by name."""
        found: dict[str, list[dict[str, Any]]] = {}
        for a in (self.get("/api/v1/alerts") or {}).get("alerts", []):
            found.setdefault(a["labels"]["alertname"], []).append(a)
        return found

    def scraped(self, up: int) -> bool:
        """Whether every target has been scraped and UP of them answered."""
        result = self.get("/api/v1/query", query='up{job="ddg"}')
        if not result or not result["result"]:
            return False
        return sum(int(float(s["value"][1])) for s in result["result"]) == up

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    tool = tools.optional(tools.prometheus)
    if isinstance(tool, str):
        pytest.skip(tool)
    made: list[Prometheus] = []

    def make(targets: list[str]) -> Prometheus:
        base = tmp_path / f"prom{len(made)}"
        base.mkdir()
        made.append(Prometheus(tool, base, targets))
        return made[-1]

    yield make
    for p in made:
        p.close()


def hostport(address: str) -> str:
    return address.split("//", 1)[1]


def test_a_dead_member_then_every_node_dead_fire_and_a_healthy_cluster_does_not(
        make_cluster: Make, prometheus: Callable[[list[str]], Prometheus]) -> None:
    c = make_cluster()
    names = c.start(3)
    goose = c.wait_goose(timeout=10)
    prom = prometheus([hostport(c.address(n)) for n in names])
    wait_until(lambda: prom.scraped(up=3), timeout=20, what="Prometheus to scrape 3 nodes")
    # healthy: two evaluations after the scrape, nothing about the cluster is active
    wait_until(lambda: "DdgAllNodesDown" not in prom.alerts(), timeout=10,
               what="DdgAllNodesDown to clear once the nodes are scraped")
    quiet = prom.alerts()
    for name in ("DdgNoGoose", "DdgNodeDown", "DdgNotAMember", "DdgAllNodesDown",
                 "DdgTwoGeese"):
        assert name not in quiet, quiet[name]

    duck = next(n for n in names if n != goose)
    c.kill(duck)
    down = wait_until(lambda: prom.alerts().get("DdgNodeDown"), timeout=20,
                      what="DdgNodeDown for the killed duck")
    assert [a["labels"]["instance"] for a in down] == [hostport(c.address(duck))]
    assert "DdgNoGoose" not in prom.alerts(), "two of three still elect: a goose"

    for n in names:
        if n != duck:
            c.kill(n)
    wait_until(lambda: prom.alerts().get("DdgAllNodesDown"), timeout=20,
               what="DdgAllNodesDown once every node is dead")
    assert len(prom.alerts()["DdgNodeDown"]) == 3


def test_a_cluster_that_was_never_created_fires(
        make_cluster: Make, prometheus: Callable[[list[str]], Prometheus]) -> None:
    """Nodes started without --bootstrap on an empty Redis: they answer (duck, /healthz) but
    wait to join forever. The cluster-wide page fires, and each node's not-a-member rule."""
    c = make_cluster(cluster="never")
    names = [c.add(bootstrap=False).name for _ in range(2)]
    wait_until(lambda: all(st is not None for st in c.statuses(names).values()), timeout=20,
               what="the nodes to answer")
    prom = prometheus([hostport(c.address(n)) for n in names])
    firing = wait_until(lambda: [a for a in prom.alerts().get("DdgNoGoose", [])
                                 if a["state"] == "firing"], timeout=30,
                        what="DdgNoGoose to fire")
    assert [a["labels"]["cluster"] for a in firing] == ["never"]
    want = sorted(hostport(c.address(n)) for n in names)
    wait_until(lambda: sorted(a["labels"]["instance"] for a in
                              prom.alerts().get("DdgNotAMember", [])) == want, timeout=20,
               what=f"DdgNotAMember for {want}")
