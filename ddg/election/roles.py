"""What a node answers on `GET /`: the core reports it, /status and the console show it."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a node answers on `GET /`, and `role` in /status (a candidate answers duck)."""

    GOOSE = "goose"
    DUCK = "duck"
    CANDIDATE = "candidate"
