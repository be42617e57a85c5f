"""The wheel holds what a user runs: the node, the console and their data, nothing for tests."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_the_wheel_ships_no_fault_harness_fake_or_test_helper(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(REPO), "-w", str(tmp_path)], capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = tmp_path.glob("duckduckgoose-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.startswith("duckduckgoose-")}
    assert packages == {"ddg", "ddg_tui"}, packages
    assert "ddg/node/node.py" in names and "ddg_tui/app.py" in names
    assert "ddg_tui/console.tcss" in names
    forbidden = [n for n in names if any(part in n for part in (
        "faults", "fake", "tests/", "conftest", "sim.py", "testkit"))]
    assert forbidden == []
