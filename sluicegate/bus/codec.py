"""Canonical events as JSON, for logs that other processes read (bus/redis.py)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from sluicegate.codecs import jsonbody
from sluicegate.events import Event, MessageStop, Metrics, TextDelta, Usage

TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in typing.get_args(Event)}


def dumps(event: Event) -> bytes:
    return jsonbody.dumpb(encode(event))


def encode(event: Event) -> dict[str, Any]:
    if isinstance(event, TextDelta):  # nearly every event: no generic walk through its fields
        return {"t": "TextDelta", "text": event.text, "index": event.index}
    return {"t": type(event).__name__, **dataclasses.asdict(event)}


def dumps_many(batch: list[Event]) -> bytes:
    body = [encode(e) for e in batch]
    return jsonbody.dumpb(body)


def loads_many(raw: bytes | str) -> list[Event | None]:
    return [decode(body) for body in jsonbody.parse(raw)]


def loads(raw: bytes | str) -> Event | None:
    return decode(jsonbody.parse(raw))


def decode(body: dict[str, Any]) -> Event | None:
    """The event, or None for a kind this version does not know (a newer replica's)."""
    cls = TYPES.get(body.pop("t", ""))
    if cls is None:
        return None
    if cls is MessageStop:
        metrics = body.get("metrics")
        return MessageStop(Usage(**body["usage"]), Metrics(**metrics) if metrics else None)
    event: Event = cls(**body)
    return event
