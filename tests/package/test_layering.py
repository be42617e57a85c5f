"""The layering holds where import-linter cannot see: the election package imports with the
standard library alone (docs/design.md, "Code layout"; the contracts are in pyproject.toml)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# In an interpreter that sees the standard library and the repository only (-I: no PYTHON*
# variables, no user site; -S: no site-packages): import every module of ddg.election, then
# list what got imported that is neither the standard library nor ddg.
PROBE = """
import json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import ddg.election
for info in pkgutil.walk_packages(ddg.election.__path__, "ddg.election."):
    __import__(info.name)
top = {name.split(".")[0] for name in sys.modules}
print(json.dumps({"election": sorted(m for m in sys.modules if m.startswith("ddg.election.")),
                  "others": sorted(top - set(sys.stdlib_module_names) - {"ddg", "__main__"}),
                  "ddg": sorted(m for m in sys.modules
                                if m.startswith("ddg.") and not m.startswith("ddg.election"))}))
"""


@pytest.mark.integration
def test_the_election_imports_with_the_standard_library_alone() -> None:
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE, str(REPO)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert "ddg.election.core" in seen["election"], seen
    assert seen["others"] == [], f"third-party modules imported: {seen['others']}"
    assert seen["ddg"] == ["ddg.errors"], f"more of ddg than the error tree: {seen['ddg']}"
