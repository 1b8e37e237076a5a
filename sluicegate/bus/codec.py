"""Canonical events as JSON, for logs that other processes read (bus/redis.py)."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from sluicegate.events import Event, MessageStop, Metrics, Usage

TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in typing.get_args(Event)}


def dumps(event: Event) -> bytes:
    body = {"t": type(event).__name__, **dataclasses.asdict(event)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def loads(raw: bytes | str) -> Event | None:
    """The event, or None for a kind this version does not know (a newer replica's)."""
    body = json.loads(raw)
    cls = TYPES.get(body.pop("t", ""))
    if cls is None:
        return None
    if cls is MessageStop:
        metrics = body.get("metrics")
        return MessageStop(Usage(**body["usage"]), Metrics(**metrics) if metrics else None)
    event: Event = cls(**body)
    return event
