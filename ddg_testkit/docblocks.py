"""The runnable blocks of docs/deploy.md, read from the doc, so that the tests run the very
commands operators copy.

A block is a fenced ```sh block under a comment `<!-- run: ID on HOST [HOST ...] [serve]
[with NAME=... ADDR=...] -->`. A comment with no block right after it runs the block of the
same ID again. `serve`: a long-running process (a server), started and left running.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"

_TAG = re.compile(
    r"<!-- run: (?P<id>[\w-]+) on (?P<hosts>[\w ]+?)(?P<serve> serve)?"
    r"(?: with NAME=(?P<name>\S+) ADDR=(?P<addr>\S+))? -->\n"
    r"(?:```sh\n(?P<body>.*?)```\n)?", re.DOTALL)
_PARAMS = re.compile(r"NAME=\S+ ADDR=\S+\n")


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    id: str
    hosts: tuple[str, ...]
    body: str
    serve: bool = False
    name: str | None = None  # NAME= and ADDR= for the block's first line, if given
    addr: str | None = None

    @property
    def parameterised(self) -> bool:
        return _PARAMS.match(self.body) is not None

    def script(self, name: str | None = None, addr: str | None = None) -> str:
        """The block, its `NAME=... ADDR=...` first line set to NAME and ADDR if it has one."""
        name, addr = self.name or name, self.addr or addr
        if not self.parameterised or not (name and addr):
            return self.body
        return _PARAMS.sub(f"NAME={name} ADDR={addr}\n", self.body, count=1)


def steps(path: Path = DEPLOY) -> list[Step]:
    """Every run comment of PATH in order; a comment without a block gets its ID's block."""
    out: list[Step] = []
    bodies: dict[str, str] = {}
    for m in _TAG.finditer(path.read_text()):
        body = m.group("body")
        if body is None:
            assert m.group("id") in bodies, f"{m.group(0)!r} refers to no earlier block"
            body = bodies[m.group("id")]
        bodies.setdefault(m.group("id"), body)
        out.append(Step(id=m.group("id"), hosts=tuple(m.group("hosts").split()), body=body,
                        serve=m.group("serve") is not None, name=m.group("name"),
                        addr=m.group("addr")))
    return out


def block(step_id: str, path: Path = DEPLOY) -> Step:
    """The first block of that ID."""
    return next(s for s in steps(path) if s.id == step_id)


def untagged_sh_blocks(path: Path = DEPLOY) -> int:
    """How many ```sh blocks have no run comment (each is a command nobody ran)."""
    text = path.read_text()
    return text.count("```sh\n") - sum(1 for m in _TAG.finditer(text) if m.group("body"))
