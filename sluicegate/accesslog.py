"""The access log: one JSON line per request (`sluicegate serve --log-format json`).

The ASGI middleware (routes/access.py) opens an Entry for each request or WebSocket connection
and keeps it in a context variable; the gateway tells it which Generation the request started
(`started`) and when that one ended (`ended`). A line is written once both the response and its
generation are over, whichever is last: a streamed answer's line comes when its stream ends,
with the generation's tokens, first-token time and stop reason. A WebSocket connection writes a
line for each generation it ran, and one for itself when it closes.

Nothing secret is written: the caller is the client's address and a digest of who it claims to
be, never a key or an Authorization header. Without the middleware this costs the gateway one
context-variable read per generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from sluicegate.generation import Generation

log = logging.getLogger("sluicegate.access")


@dataclass(slots=True)
class Entry:
    """One request as the access log sees it, until its line is written."""

    door: str
    method: str
    path: str
    caller: str
    websocket: bool = False
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    request_id: str | None = None
    gen: Generation | None = None
    response_done: bool = False

    def fields(self) -> dict[str, Any]:
        """The line's fields (the generation's figures, if there was one)."""
        gen = self.gen
        out: dict[str, Any] = {
            "request_id": gen.id if gen is not None else self.request_id or new_request_id(),
            "door": self.door,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "caller": self.caller,
            "caller_id": caller_id(gen.owner) if gen is not None else None,
            "duration_ms": round((time.monotonic() - self.started) * 1000),
        }
        if gen is not None:
            m = gen.metrics
            out |= {
                "model": gen.request.model,
                "provider": gen.provider,
                "input_tokens": gen.usage.input_tokens,
                "output_tokens": gen.usage.output_tokens,
                "first_token_ms": m.first_token_ms,
                "generation_ms": m.total_ms,
                "stop_reason": gen.stop_reason,
                "error": type(gen.error).__name__ if gen.error is not None else None,
            }
        return out


current: ContextVar[Entry | None] = ContextVar("sluicegate_access_entry", default=None)
# Entries whose response is over while their generation still runs, by generation id.
_waiting: dict[str, Entry] = {}


def started(gen: Generation) -> None:
    """The gateway started `gen` for the request being served now (if the log is on)."""
    entry = current.get()
    if entry is None:
        return
    if entry.websocket:  # a line of its own for each generation on the connection
        _waiting[gen.id] = replace(entry, gen=gen, status=None, started=time.monotonic())
    elif entry.gen is None:
        entry.gen = gen


def ended(gen: Generation) -> None:
    """`gen` ended: write the line that waited for it."""
    if _waiting:
        entry = _waiting.pop(gen.id, None)
        if entry is not None:
            write(entry)


def finish(entry: Entry) -> None:
    """The response is over: write the line now, or when its generation ends."""
    entry.response_done = True
    gen = entry.gen
    if gen is not None and not gen.done:
        _waiting[gen.id] = entry
    else:
        write(entry)


def write(entry: Entry) -> None:
    log.info("access", extra={"fields": entry.fields()})


def caller_id(owner: str) -> str | None:
    """Who the caller says it is, as a digest: an access key id or a key's digest is not
    written as it is."""
    if not owner:
        return None
    if owner.startswith("bearer:"):
        return owner  # already a digest (routes/aws.caller)
    return "id:" + hashlib.sha256(owner.encode()).hexdigest()[:16]


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message, and its `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out |= getattr(record, "fields", {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


# A key in a query string: uvicorn's own lines name the path with it (`/ws?token=...`, which
# browsers use, having no other way to send one on a WebSocket handshake).
SECRET_QUERY = re.compile(
    r"([?&](?:token|api_key|apikey|key|access_token|X-Amz-Signature|X-Amz-Credential)=)[^&\s\"]*",
    re.IGNORECASE,
)


class Redact(logging.Filter):
    """Hides the values of secret query parameters in a record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        # In the arguments, where they are: uvicorn's access formatter unpacks them.
        if isinstance(record.args, tuple):
            record.args = tuple(_hide(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _hide(record.msg)
        return True


def _hide(text: str) -> str:
    return SECRET_QUERY.sub(r"\1***", text) if "=" in text else text


def redact_uvicorn() -> None:
    """uvicorn's loggers (its access log, WebSocket lines) never write a key in a query."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, Redact) for f in logger.filters):
            logger.addFilter(Redact())


def use_json(level: str) -> None:
    """Every log record as a JSON line on standard output."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redact())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
