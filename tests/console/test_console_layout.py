"""The console fits any terminal: the header, the table's columns and the footer are laid out
for the width (pure functions, no Textual app)."""

from __future__ import annotations

from itertools import pairwise

from rich.cells import cell_len

from ddg_testkit.fake_source import troubled_cluster
from ddg_tui.keys import footer_keys
from ddg_tui.model import ClusterModel
from ddg_tui.views import HeaderView, Part, fit_parts, header_parts, header_view
from ddg_tui.widgets.history import spark_rows
from ddg_tui.widgets.keybar import fit_keys, key_display
from ddg_tui.widgets.table import ALWAYS, COLUMNS, GAP, fit, plan_columns


def header(**over: object) -> HeaderView:
    base: dict[str, object] = dict(
        cluster="prod-east", redis_ok=True, redis_error=None, members=15, version=123,
        quorum=8, goose="node-12", term=1234, max_term=1234, geese=(), answering=15,
        leaderless_ms=None, last_goose="node-12", security="hmac")
    base.update(over)
    return HeaderView(**base)  # type: ignore[arg-type]


def line_text(parts: list[Part], width: int, lead: str = "") -> str:
    chosen, sep = fit_parts(parts, width, lead=lead)
    return lead + sep.join("".join(t for t, _ in segs) for segs in chosen)


def test_the_header_fits_80_columns_and_keeps_what_matters() -> None:
    one, two = header_parts(header(), mode="demo: 15 nodes started here",
                            mode_short="demo, 15 ours", location="redis://10.0.0.5:6379/0",
                            poll="poll 250 ms, timeout 400 ms", poll_short="poll 250 ms")
    first, second = line_text(one, 80), line_text(two, 80, lead=" ")
    assert cell_len(first) <= 80 and cell_len(second) <= 80
    for must in ("cluster prod-east", "Redis ● up"):
        assert must in first
    for must in ("members 15", "quorum 8", "15/15", "goose ★ node-12", "term 1234"):
        assert must in second
    # less important parts go: the Redis URL first, the poll timing is shortened
    assert "redis://" not in first and "timeout" not in second
    wide_one, wide_two = line_text(one, 200), line_text(two, 200, lead=" ")
    assert "redis://10.0.0.5:6379/0" in wide_one and "timeout 400 ms" in wide_two


def test_a_part_is_shortened_before_it_is_dropped() -> None:
    parts = [Part.of("always"), Part.of("a long thing", short="short", drop=1),
             Part.of("dropped first", drop=1)]
    assert line_text(parts, 100) == "always  ·  a long thing  ·  dropped first"
    assert line_text(parts, 31) == "always · short · dropped first"
    assert line_text(parts, 20) == "always"


def test_the_columns_that_matter_always_stay_and_the_others_drop_in_order() -> None:
    natural = {c.key: (c.width or 12) if not c.flex else c.min_width for c in COLUMNS}
    seen: list[list[str]] = []
    for width in range(200, 40, -1):
        plan = plan_columns(natural, width)
        keys = [k for k, _ in plan]
        assert set(ALWAYS) <= set(keys), width
        assert keys == [c.key for c in COLUMNS if c.key in keys]  # in their order
        used = 1 + sum(w for _, w in plan) + GAP * (len(plan) - 1)
        if width >= 1 + sum(natural[k] for k in ALWAYS) + GAP * (len(ALWAYS) - 1):
            assert used <= width, width
        if not seen or seen[-1] != keys:
            seen.append(keys)
    dropped = [next(iter(set(a) - set(b))) for a, b in pairwise(seen)]
    assert dropped == ["pid", "uptime", "address", "latency", "lease", "hb"]


def test_cells_are_cut_with_an_ellipsis() -> None:
    assert fit("connection refused", 10) == "connectio…"
    assert fit("ok", 5) == "ok   " and fit("7", 4, right=True) == "   7"


def test_the_footer_fits_80_columns() -> None:
    keys = [(k, True) for k in footer_keys()]
    shown, short = fit_keys(keys, 80)
    width = 1 + sum(cell_len(key_display(k)) + 1 + cell_len(k.footer_short) + 2
                    for k, _ in shown) - 2
    assert short and width <= 80
    assert {k.key for k, _ in shown} >= {"enter", "k", "question_mark", "q"}
    # disabled keys go before enabled ones of the same rank
    keys = [(k, k.key != "h") for k in footer_keys()]
    assert "h" not in {k.key for k, _ in fit_keys(keys, 80)[0]}
    shown, short = fit_keys(keys, 300)
    assert not short and len(shown) == len(keys)


def test_one_failover_is_not_a_solid_block() -> None:
    rows, top = spark_rows([180.0], width=10, height=3)
    assert top == 500.0
    column = "".join(r[0] for r in rows)
    assert column.strip() and "█" not in column[:2]  # the top rows are (nearly) empty
    rows, top = spark_rows([100.0, 1000.0], width=10, height=3)
    assert top == 1000.0 and [r[1] for r in rows] == ["█", "█", "█"]


def test_the_troubled_cluster_header_fits_80_columns() -> None:
    src = troubled_cluster()
    m = ClusterModel(cluster=src.cluster)
    one, two = header_parts(header_view(m, 0.0), mode="attached (nodes are not ours)",
                            mode_short="attached", location=src.location,
                            poll="poll 250 ms, timeout 400 ms", poll_short="poll 250 ms")
    assert cell_len(line_text(one, 80)) <= 80 and cell_len(line_text(two, 80, " ")) <= 80
