"""Node and cluster names: what a member may be called (also the key prefix of its cluster).

One rule for every reader: the config, the peer messages and the registry."""

from __future__ import annotations

import re

from ddg.errors import ConfigError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_name(kind: str, value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ConfigError(
            f"{kind} {value!r} is not valid: use 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return value
