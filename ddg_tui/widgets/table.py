"""The node table: one row per member, drawn line by line (Textual's Line API).

Each row is drawn once into a Strip and kept until one of its cells, the column layout, the
cursor or the focus changes, and only the lines that changed are repainted: at 25 nodes polled
4 times a second, a screen update touches the rows whose values moved and nothing else.

The columns fit the width: name, role, term, follows and state are always shown (state takes
what is left and is cut with "…"); the others drop out one by one on a narrow terminal (pid
first, then uptime, address, poll, lease and hb age). The cursor follows its node when rows
are sorted, filtered or added, the table scrolls with the cursor, and its title says how many
nodes are out of view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ddg.client import Role

from ..fmt import fmt_ms, fmt_uptime, natural_key
from ..keys import table_keys
from ..views import RowView

Cell = tuple[str, str]  # (text, style)

GOOSE, DUCK, CANDIDATE = Role.GOOSE, Role.DUCK, Role.CANDIDATE


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int | None = None  # fixed; None: its widest cell, up to max_width
    right: bool = False
    drop: int = 0  # 0: always shown; else dropped on a narrow terminal, 1 first
    max_width: int = 40
    flex: bool = False  # takes the width that is left (at least min_width)
    min_width: int = 0


COLUMNS: tuple[Column, ...] = (
    Column("name", "name", max_width=20),
    Column("address", "address", drop=3, max_width=28),
    Column("role", "role", 11),
    Column("term", "term", 4, right=True),
    Column("follows", "follows", max_width=16),
    Column("hb", "hb age", 6, right=True, drop=6),
    Column("lease", "lease", 6, right=True, drop=5),
    Column("latency", "poll", 6, right=True, drop=4),
    Column("uptime", "uptime", 6, right=True, drop=2),
    Column("pid", "pid", 7, right=True, drop=1),
    Column("state", "state", flex=True, min_width=34),
)
COLUMN_INDEX = {c.key: i for i, c in enumerate(COLUMNS)}
ALWAYS = tuple(c.key for c in COLUMNS if not c.drop)
GAP = 2

ROLE_CELLS: dict[str, tuple[str, str]] = {
    GOOSE: ("★ GOOSE", "bold black on #ffd200"),
    DUCK: ("duck", "#8fb3d9"),
    CANDIDATE: ("◌ candidate", "bold magenta"),
    "starting": ("… starting", "bold #8fb3d9"),
    "unreachable": ("✗ no answer", "bold red"),
    "killed": ("✗ killed", "bold red"),
    "stopped": ("■ stopped", "bold #ff8c00"),
    "exited": ("✗ exited", "bold red"),
    "pending": ("… pending", "dim"),
}
LEVEL_STYLE = {"info": "", "good": "green", "warning": "bold #ff8c00", "error": "bold red"}

# Sort orders `S` cycles through: (column, descending).
SORTS: tuple[tuple[str, bool], ...] = (
    ("name", False), ("role", False), ("term", True), ("state", False), ("latency", True),
    ("uptime", False),
)
_ROLE_ORDER = {GOOSE: 0, CANDIDATE: 1, "starting": 2, DUCK: 3, "pending": 4, "unreachable": 5,
               "stopped": 6, "killed": 7, "exited": 8}
_LEVEL_ORDER = {"error": 0, "warning": 1, "info": 2, "good": 3}
_NONE_LAST = float("inf")


def _sort_key(column: str) -> Callable[[RowView], Any]:
    if column == "role":
        return lambda r: (_ROLE_ORDER.get(r.role, 9), natural_key(r.name))
    if column == "term":
        return lambda r: (-1 if r.term is None else r.term, natural_key(r.name))
    if column == "state":
        return lambda r: (_LEVEL_ORDER.get(r.level, 9), natural_key(r.name))
    if column == "latency":
        return lambda r: (-1.0 if r.latency_ms is None else r.latency_ms, natural_key(r.name))
    if column == "uptime":
        return lambda r: (_NONE_LAST if r.uptime_s is None else r.uptime_s,
                          natural_key(r.name))
    return lambda r: natural_key(r.name)


def _address(addr: str) -> str:
    return addr.removeprefix("http://")


def row_cells(row: RowView) -> tuple[Cell, ...]:
    """What each column of ROW shows, in COLUMNS order."""
    label, style = ROLE_CELLS.get(row.role, (row.role, ""))
    stale = "dim italic" if row.stale else ""
    lat_style = "" if row.latency_ms is None or row.latency_ms < 100 else "#ff8c00"
    hb_style = "" if row.heartbeat_age_ms is None or row.heartbeat_age_ms < 300 else "#ff8c00"
    return (
        (row.name, "bold #ffd200" if row.role == GOOSE else "bold"),
        (_address(row.address), "dim" if row.stale else ""),
        (label, style),
        ("—" if row.term is None else str(row.term), stale),
        (row.follows or "—", stale),
        (fmt_ms(row.heartbeat_age_ms), hb_style),
        (fmt_ms(row.lease_remaining_ms), ""),
        (fmt_ms(row.latency_ms), lat_style),
        (fmt_uptime(row.uptime_s), ""),
        ("—" if row.pid is None else str(row.pid), "" if row.pid_owned else "dim"),
        (row.state, LEVEL_STYLE.get(row.level, "")),
    )


@lru_cache(maxsize=256)
def _style(text: str) -> Style:
    return Style.parse(text) if text else Style.null()


def fit(text: str, width: int, right: bool = False) -> str:
    """TEXT in exactly WIDTH cells: padded, or cut with an ellipsis."""
    length = cell_len(text)
    if length > width:
        return set_cell_size(text, width - 1) + "…" if width > 0 else ""
    pad = " " * (width - length)
    return pad + text if right else text + pad


def plan_columns(natural: dict[str, int], width: int) -> tuple[tuple[str, int], ...]:
    """Which columns fit in WIDTH cells, and how wide each is. NATURAL: each column's width
    for its content. The flexible column takes the rest."""
    chosen = {c.key for c in COLUMNS if not c.drop}

    def used(keys: Iterable[str]) -> int:
        keys = list(keys)
        return 1 + sum(natural[k] for k in keys) + GAP * (len(keys) - 1)

    for col in sorted((c for c in COLUMNS if c.drop), key=lambda c: -c.drop):
        if used(chosen | {col.key}) > width:
            break  # strictly in order: no narrow column in the place of a wide one
        chosen.add(col.key)
    out = []
    spare = width - used(chosen)
    for col in COLUMNS:
        if col.key in chosen:
            w = natural[col.key] + (max(0, spare) if col.flex else 0)
            out.append((col.key, w))
    return tuple(out)


class NodeTable(ScrollView, can_focus=True):
    """One row per registered member, keyed by name, updated in place."""

    BINDINGS: ClassVar[list[Binding]] = [  # type: ignore[assignment]
        Binding(key, action, show=False) for k in table_keys() for key, action in k.pairs()]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "nodetable--header", "nodetable--cursor", "nodetable--sorted",
    }

    DEFAULT_CSS = """
    NodeTable {
        background: $surface;
        color: $foreground;
        height: auto;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        & > .nodetable--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .nodetable--sorted {
            color: $accent;
        }
        & > .nodetable--cursor {
            background: $block-cursor-blurred-background;
        }
        &:focus > .nodetable--cursor {
            background: $block-cursor-background;
        }
    }
    """

    class Highlighted(Message):
        """The cursor moved to another node (or to none)."""

        def __init__(self, table: NodeTable, name: str | None) -> None:
            super().__init__()
            self.table = table
            self.name = name

    class Chosen(Message):
        """A node row was double-clicked."""

        def __init__(self, table: NodeTable, name: str) -> None:
            super().__init__()
            self.table = table
            self.name = name

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rows: dict[str, RowView] = {}
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self._order: list[str] = []  # the names shown, in order
        self._cursor: str | None = None
        self._sort = 0  # index into SORTS
        self._filter = ""
        self._plan: tuple[tuple[str, int], ...] = ()
        self._plan_for: tuple[Any, ...] = ()
        self._strips: dict[str, tuple[tuple[Any, ...], Strip]] = {}
        self._header: tuple[tuple[Any, ...], Strip] | None = None
        self._natural: dict[str, int] = {}
        self.rows_drawn = 0  # rows rendered into strips (the benchmark and tests read it)

    # ---- what the table holds --------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The names shown, top to bottom."""
        return list(self._order)

    @property
    def rows(self) -> dict[str, RowView]:
        """The rows shown, by name."""
        return {n: self._rows[n] for n in self._order}

    @property
    def total(self) -> int:
        """Every member, shown or filtered out."""
        return len(self._rows)

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def cursor_row(self) -> int:
        if self._cursor is None or self._cursor not in self._order:
            return 0
        return self._order.index(self._cursor)

    @property
    def sort_column(self) -> tuple[str, bool]:
        return SORTS[self._sort]

    @property
    def filter_text(self) -> str:
        return self._filter

    def selected(self) -> str | None:
        if self._cursor is not None and self._cursor in self._order:
            return self._cursor
        return None

    def get_cell(self, name: str, key: str) -> Text:
        text, style = self._cells[name][COLUMN_INDEX[key]]
        return Text(text, style=style)

    def visible_columns(self) -> list[str]:
        return [k for k, _ in self._plan]

    def out_of_view(self) -> tuple[int, int]:
        """(rows above the view, rows below it)."""
        shown = max(0, self.scrollable_content_region.height - 1)
        top = round(self.scroll_offset.y)
        return top, max(0, len(self._order) - top - shown)

    # ---- changes ---------------------------------------------------------------------------

    def sync(self, rows: Sequence[RowView]) -> None:
        """Show ROWS: rows that changed are redrawn, the others stay as they are."""
        wanted = {r.name: r for r in rows}
        changed: list[str] = []
        for name in [n for n in self._rows if n not in wanted]:
            del self._rows[name]
            del self._cells[name]
            self._strips.pop(name, None)
        for name, row in wanted.items():
            if self._rows.get(name) == row:
                continue
            self._rows[name] = row
            cells = row_cells(row)
            if self._cells.get(name) != cells:
                self._cells[name] = cells
                changed.append(name)
        reordered = self._reorder()
        replanned = self._replan()
        self._update_title()
        if reordered or replanned:
            self.refresh()
            return
        for name in changed:
            self._refresh_row(name)

    def set_filter(self, text: str) -> None:
        if text == self._filter:
            return
        self._filter = text
        self._reorder()
        self._replan()
        self._update_title()
        self.refresh()

    def cycle_sort(self) -> tuple[str, bool]:
        self._sort = (self._sort + 1) % len(SORTS)
        self._reorder()
        self._replan()
        self.refresh()
        self._scroll_to_cursor()
        self._update_title()
        return SORTS[self._sort]

    def _update_title(self) -> None:
        total, shown = len(self._rows), len(self._order)
        title = f"nodes {total}"
        if self._filter:
            title = f"nodes {shown} of {total} · filter “{self._filter}”"
        above, below = self.out_of_view()
        if above or below:
            title += f" · {above + below} out of view: ↑{above} ↓{below}"
        if title != self.border_title:
            self.border_title = title

    def select(self, name: str) -> bool:
        if name not in self._order:
            return False
        self._move(name)
        return True

    def _reorder(self) -> bool:
        """Sort and filter; True if the rows shown or their order changed."""
        column, descending = SORTS[self._sort]
        needle = self._filter.lower()
        rows = [r for r in self._rows.values() if needle in r.name.lower()]
        rows.sort(key=_sort_key(column), reverse=descending)
        order = [r.name for r in rows]
        if order == self._order:
            return False
        old_index = self.cursor_row
        self._order = order
        height = len(order) + 1
        if self.virtual_size.height != height:
            self.virtual_size = Size(self.virtual_size.width, height)
        if self._cursor not in order:
            self._cursor = order[min(old_index, len(order) - 1)] if order else None
            self.post_message(self.Highlighted(self, self._cursor))
        self._scroll_to_cursor()
        return True

    def _replan(self) -> bool:
        """Lay the columns out again if the width or a column's content width changed."""
        natural: dict[str, int] = {}
        column, _ = SORTS[self._sort]
        for i, col in enumerate(COLUMNS):
            label = cell_len(col.label) + (2 if col.key == column else 0)
            if col.flex:
                natural[col.key] = col.min_width
            elif col.width is not None:
                natural[col.key] = max(col.width, label)
            else:
                widest = max((cell_len(c[i][0]) for c in self._cells.values()), default=0)
                natural[col.key] = min(col.max_width, max(widest, label))
        width = self.scrollable_content_region.width
        key = (width, tuple(natural.values()))
        if key == self._plan_for:
            return False
        self._plan_for = key
        self._natural = natural
        self._plan = plan_columns(natural, width)
        return True

    # ---- the cursor --------------------------------------------------------------------------

    def _move(self, name: str | None) -> None:
        old = self._cursor
        if name == old:
            self._scroll_to_cursor()
            return
        self._cursor = name
        if old is not None:
            self._refresh_row(old)
        if name is not None:
            self._refresh_row(name)
        self._scroll_to_cursor()
        self.post_message(self.Highlighted(self, name))

    def _move_by(self, delta: int) -> None:
        if not self._order:
            return
        i = max(0, min(len(self._order) - 1, self.cursor_row + delta))
        self._move(self._order[i])

    def _scroll_to_cursor(self) -> None:
        if self._cursor is None or self._cursor not in self._order:
            return
        i = self._order.index(self._cursor)
        shown = max(1, self.scrollable_content_region.height - 1)
        top = round(self.scroll_offset.y)
        if i < top:
            self.scroll_to(y=i, animate=False, immediate=True)
        elif i >= top + shown:
            self.scroll_to(y=i - shown + 1, animate=False, immediate=True)

    def action_cursor_up(self) -> None:
        self._move_by(-1)

    def action_cursor_down(self) -> None:
        self._move_by(1)

    def action_cursor_first(self) -> None:
        if self._order:
            self._move(self._order[0])

    def action_cursor_last(self) -> None:
        if self._order:
            self._move(self._order[-1])

    def action_page_up(self) -> None:
        self._move_by(-max(1, self.scrollable_content_region.height - 2))

    def action_page_down(self) -> None:
        self._move_by(max(1, self.scrollable_content_region.height - 2))

    def action_clear_filter(self) -> None:
        self.set_filter("")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_filter":
            return bool(self._filter)
        return True

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        i = round(self.scroll_offset.y) + offset.y - 1
        if 0 <= i < len(self._order):
            name = self._order[i]
            self._move(name)
            if event.chain == 2:
                self.post_message(self.Chosen(self, name))

    # ---- drawing ---------------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self._replan()
        self._scroll_to_cursor()
        self._update_title()

    def on_focus(self, event: events.Focus) -> None:
        if self._cursor is not None:
            self._refresh_row(self._cursor)

    def on_blur(self, event: events.Blur) -> None:
        if self._cursor is not None:
            self._refresh_row(self._cursor)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
        self._header = None

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if round(old_value) != round(new_value):
            self._update_title()

    def _refresh_row(self, name: str) -> None:
        if name not in self._order:
            return
        y = self._order.index(name) - round(self.scroll_offset.y) + 1
        if 1 <= y < self.scrollable_content_region.height:
            self.refresh(Region(0, y, self.scrollable_content_region.width, 1))

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._header_strip(width)
        i = round(self.scroll_offset.y) + y - 1
        if not 0 <= i < len(self._order):
            return Strip.blank(width, self.rich_style)
        name = self._order[i]
        cursor = name == self._cursor
        key = (self._cells[name], self._plan, width, cursor, cursor and self.has_focus)
        cached = self._strips.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        base = self.rich_style
        if cursor:
            base = base + self.get_component_rich_style("nodetable--cursor")
        cells = self._cells[name]
        strip = self._draw([c[0] for c in cells], [_style(c[1]) for c in cells], base, width)
        self._strips[name] = (key, strip)
        self.rows_drawn += 1
        return strip

    def _header_strip(self, width: int) -> Strip:
        key = (self._plan, width, self._sort)
        if self._header is not None and self._header[0] == key:
            return self._header[1]
        column, descending = SORTS[self._sort]
        labels: list[str] = []
        styles: list[Style] = []
        sorted_style = self.get_component_rich_style("nodetable--sorted", partial=True)
        for col in COLUMNS:
            if col.key == column:
                arrow = "▼" if descending else "▲"
                labels.append(f"{arrow} {col.label}" if col.right else f"{col.label} {arrow}")
                styles.append(sorted_style)
            else:
                labels.append(col.label)
                styles.append(Style.null())
        base = self.rich_style + self.get_component_rich_style("nodetable--header")
        strip = self._draw(labels, styles, base, width)
        self._header = (key, strip)
        return strip

    def _draw(self, texts: Sequence[str], styles: Sequence[Style], base: Style,
              width: int) -> Strip:
        segments = [Segment(" ", base)]
        for n, (key, w) in enumerate(self._plan):
            i = COLUMN_INDEX[key]
            if n:
                segments.append(Segment(" " * GAP, base))
            segments.append(Segment(fit(texts[i], w, COLUMNS[i].right), base + styles[i]))
        return Strip(segments).adjust_cell_length(width, base)
