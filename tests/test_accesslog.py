"""The access log's pieces that need no server: keys in query strings hidden from uvicorn's
lines (in either log format), and the JSON formatter."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from uvicorn.logging import AccessFormatter

from sluicegate import accesslog


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    """What uvicorn's loggers pass to their handlers (they may not propagate to the root)."""
    handler = Kept()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn.access")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_key_in_a_query_string_never_reaches_uvicorn_s_lines(kept: Kept) -> None:
    accesslog.redact_uvicorn()
    # As uvicorn's WebSocket and access lines say it.
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws?token=sk-secret&owner=me"
    )
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5000",
        "GET",
        "/fn/x/?api_key=sk-other&X-Amz-Signature=abc123",
        "1.1",
        200,
    )
    ws, access = kept.records
    assert ws.getMessage() == '127.0.0.1:5000 - "WebSocket /ws?token=***&owner=me" [accepted]'
    # uvicorn's own access formatter (text mode) still finds its arguments.
    shown = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(access)
    assert shown == '127.0.0.1:5000 - "GET /fn/x/?api_key=***&X-Amz-Signature=*** HTTP/1.1" 200 OK'


def test_a_record_is_one_json_object_with_its_fields() -> None:
    record = logging.LogRecord("sluicegate.access", logging.INFO, "", 0, "access", None, None)
    record.fields = {"door": "ws", "status": None, "output_tokens": 4}
    line = accesslog.JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["logger"] == "sluicegate.access" and out["level"] == "info"
    assert out["door"] == "ws" and out["status"] is None and out["output_tokens"] == 4
    assert out["time"].endswith("Z") and out["message"] == "access"
