"""The console's keys are written once, in ddg_tui/keys.py: the app binds them, the help screen,
--help and the command palette show them, and README.md's key table says the same."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import App
from textual.widgets import Static

try:
    from ddg_testkit.fake_source import FakeFleet, healthy_cluster
except ImportError:  # before the fake moved out of tests/
    from fake_source import FakeFleet, healthy_cluster  # type: ignore[no-redef,import-not-found]

from ddg_tui.app import ConsoleApp
from ddg_tui.cli import build_parser
from ddg_tui.keys import KEYS, console_keys, markdown_table, palette_keys
from ddg_tui.screens import HelpScreen
from ddg_tui.source import FixedClock
from ddg_tui.widgets.table import NodeTable

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_key_rows() -> list[tuple[str, str]]:
    """(key, action) of each row of README.md's table that starts with `| Key | Action |`."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.replace(" ", "").startswith("|Key|Action|"))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if all(set(c) <= set("-: ") for c in cells):
            continue  # the |---|---| line
        assert len(cells) == 2, f"README key table row with {len(cells)} cells: {line!r}"
        rows.append((cells[0].strip("`"), cells[1]))
    return rows


def test_readme_key_table_matches_keys_py() -> None:
    expected = [(k.shown, k.text) for k in KEYS]
    assert readme_key_rows() == expected, (
        "README.md's key table differs from ddg_tui/keys.py; paste the output of "
        "`python -m ddg_tui.keys`:\n" + markdown_table())


def test_every_key_has_its_action() -> None:
    bound = {(b.key, b.action) for b in ConsoleApp.BINDINGS}  # type: ignore[union-attr]
    table_bindings = {(b.key, b.action) for b in NodeTable.BINDINGS}  # type: ignore[union-attr]
    for k in KEYS:
        for key, action in k.pairs():
            if k.bound_by == "table":
                assert hasattr(NodeTable, f"action_{action}"), k
                assert (key, action) in table_bindings, k
            else:
                assert callable(getattr(ConsoleApp, f"action_{action}", None)), k
                if k.bound_by == "console":
                    assert (key, action) in bound, k
                else:
                    assert k.bound_by == "app" and App.COMMAND_PALETTE_BINDING == key, k


def test_bindings_are_the_table_in_its_order() -> None:
    assert [(b.key, b.action, b.description) for b in ConsoleApp.BINDINGS] == [  # type: ignore[union-attr]
        (k.key, k.action, k.label) for k in console_keys()]
    assert all(k.label for k in console_keys())
    assert len({k.key for k in KEYS}) == len(KEYS)


def test_cli_epilog_lists_every_key() -> None:
    help_text = build_parser().format_help()
    for k in KEYS:
        assert f"{k.shown}" in help_text and k.text in help_text, k


def help_rows(app: ConsoleApp) -> list[tuple[Text, Text]]:
    screen = app.screen
    assert isinstance(screen, HelpScreen)
    grid = next(s.content for s in screen.query(Static) if isinstance(s.content, Table))
    keys, texts = (list(c.cells) for c in grid.columns)
    return list(zip(keys, texts, strict=True))  # type: ignore[arg-type]


async def test_help_screen_and_palette_show_the_table() -> None:
    source = healthy_cluster()
    app = ConsoleApp(source=source, fleet=FakeFleet(sorted(source.members)),
                     clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {k.title for k in palette_keys()} <= titles
        await pilot.press("question_mark")
        await pilot.pause()
        rows = help_rows(app)
        assert [(key.plain, text.plain) for key, text in rows] == [
            (k.shown, k.text) for k in KEYS]
        assert not any(text.style for _, text in rows)


async def test_help_screen_dims_demo_keys_in_attach_mode() -> None:
    app = ConsoleApp(source=healthy_cluster(), fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        dimmed = [key.plain for key, text in help_rows(app) if text.style == "dim"]
        assert dimmed == [k.shown for k in KEYS if not k.attach] == ["a", "k", "s", "t"]
