"""The console's keys, written once.

The app's BINDINGS (and so its footer), its command palette, the help screen, the epilog of
`ddg-console --help` and README.md's key table are all made from KEYS;
tests/console/test_console_keys.py checks that the README says the same and that every action
exists.
`python -m ddg_tui.keys` prints the README table.

This module imports nothing from Textual, so that `ddg-console --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Who binds the key: ConsoleApp.BINDINGS ("console"), Textual's App itself ("app": the command
# palette), or the node table (ddg_tui.widgets.table.NodeTable: "table", the cursor keys).
BoundBy = Literal["console", "app", "table"]

# Appended to the description of a key that does nothing in attach mode.
DEMO_ONLY = "; demo mode only"


@dataclass(frozen=True, kw_only=True, slots=True)
class Key:
    key: str
    """Textual key name, as in a Binding; several comma-separated ("up,down")."""
    action: str
    """Action name (action_<name> on the binder); one per key name when there are several."""
    label: str
    """Short label for the footer; "" for keys the console does not bind itself."""
    description: str
    """What the key does, for the help screen, --help and README.md."""
    attach: bool
    """Whether the key applies in attach mode (else it needs processes started by --demo)."""
    display: str = ""
    """How the key is written for people ("?", "↑ ↓"); "" means `key` as it is."""
    title: str = ""
    """Command palette entry; "" keeps it out of the palette."""
    bound_by: BoundBy = "console"
    short: str = ""
    """Footer label for a narrow terminal; "" means `label`."""
    keep: int = 0
    """Footer rank: 0 keeps the key out of the footer; when the footer is too narrow, the keys
    of the lowest rank go first."""

    @property
    def footer_label(self) -> str:
        return self.label or self.description

    @property
    def footer_short(self) -> str:
        return self.short or self.footer_label

    @property
    def shown(self) -> str:
        return self.display or self.key

    @property
    def text(self) -> str:
        """The description as the help screen, --help and README.md show it."""
        return self.description + ("" if self.attach else DEMO_ONLY)

    def pairs(self) -> list[tuple[str, str]]:
        """(key name, action) for each of this entry's keys."""
        keys, actions = self.key.split(","), self.action.split(",")
        if len(keys) != len(actions):
            raise ValueError(f"{self.key!r}: {len(keys)} keys but {len(actions)} actions")
        return list(zip(keys, actions, strict=True))


KEYS: tuple[Key, ...] = (
    Key(key="up,down", display="↑ ↓", action="cursor_up,cursor_down", label="",
        description="move between nodes", attach=True, bound_by="table"),
    Key(key="home,end", display="Home End", action="cursor_first,cursor_last", label="",
        description="first / last node", attach=True, bound_by="table"),
    Key(key="pageup,pagedown", display="PgUp PgDn", action="page_up,page_down", label="",
        description="a page of nodes up / down", attach=True, bound_by="table"),
    Key(key="enter", display="Enter", action="detail", label="Detail", short="info",
        title="Details of the selected node", keep=7,
        description="details of the selected node: every /status field, its events, and the "
                    "tail of its log if this console started it", attach=True),
    Key(key="slash", display="/", action="filter", label="Filter", short="find", keep=6,
        title="Filter nodes by name",
        description="filter the nodes by name (Enter keeps the filter, Esc clears it)",
        attach=True),
    Key(key="S", action="sort", label="Sort", short="sort", keep=2, title="Sort by the next column",
        description="sort by the next column (name, role, term, state, poll, uptime)",
        attach=True),
    Key(key="escape", display="Esc", action="clear_filter", label="",
        description="clear the filter", attach=True, bound_by="table"),
    Key(key="a", action="add", label="Add", short="add", keep=4, title="Add a node",
        description="add a node: a new ddg-node on the next free port", attach=False),
    Key(key="k", action="kill", label="Kill", short="kill", keep=8, title="Kill selected node",
        description="kill the selected node (SIGKILL)", attach=False),
    Key(key="s", action="stop", label="Stop", short="stop", keep=6, title="Stop selected node",
        description="stop the selected node gracefully (SIGTERM)", attach=False),
    Key(key="t", action="start", label="Start", short="start", keep=6,
        title="Start selected node",
        description="start the selected node again (same name, port and data dir)",
        attach=False),
    Key(key="r", action="remove", label="Remove", short="rm", keep=4,
        title="Remove selected node",
        description="remove the selected node from the registry (asks first); stops it if ours",
        attach=True),
    Key(key="g", action="goto_goose", label="Goose", short="goose", keep=3,
        title="Go to the goose", description="jump to the current goose", attach=True),
    Key(key="p", action="isolate", label="Isolate", short="isol", keep=5,
        title="Isolate selected node",
        description="isolate the selected node from all peers (fault injection)", attach=True),
    Key(key="h", action="heal", label="Heal", short="heal", keep=5, title="Heal partitions",
        description="heal every partition this console made", attach=True),
    Key(key="question_mark", display="?", action="help", label="Help", short="help", keep=9,
        title="Help: keys", description="help: the keys and what the table shows", attach=True),
    Key(key="ctrl+p", action="command_palette", label="palette", keep=1,
        description="command palette: every action by name", attach=True, bound_by="app"),
    # Not in the palette: Textual's own system commands already offer "Quit".
    Key(key="q", action="quit", label="Quit", short="quit", keep=9,
        description="quit (demo mode: stops every node and Redis it started)", attach=True),
)


def console_keys() -> tuple[Key, ...]:
    """The keys ConsoleApp binds itself, in footer order."""
    return tuple(k for k in KEYS if k.bound_by == "console")


def table_keys() -> tuple[Key, ...]:
    """The keys the node table binds itself."""
    return tuple(k for k in KEYS if k.bound_by == "table")


def footer_keys() -> tuple[Key, ...]:
    """The keys the main screen's footer shows (when they apply), in footer order."""
    return tuple(k for k in KEYS if k.keep)


def palette_keys() -> tuple[Key, ...]:
    return tuple(k for k in KEYS if k.title)


def epilog() -> str:
    """The key list for the end of `ddg-console --help`."""
    width = max(len(k.shown) for k in KEYS)
    lines = ["keys:"] + [f"  {k.shown:<{width}}  {k.text}" for k in KEYS]
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """README.md's key table."""
    rows = ["| Key | Action |", "|-----|--------|"]
    rows += [f"| `{k.shown}` | {k.text} |" for k in KEYS]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
