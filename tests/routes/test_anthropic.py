"""The Anthropic door's error responses: Anthropic's shape, the status that API gives each error
type, and Retry-After when the error carries one."""

from __future__ import annotations

import json

import pytest

from sluicegate import errors
from sluicegate.routes.anthropic import error_response


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (errors.ValidationError("bad"), 400, "invalid_request_error"),
        (errors.PayloadTooLarge("big"), 413, "request_too_large"),
        (errors.NotFound("gone"), 404, "not_found_error"),
        (errors.Throttled("slow"), 429, "rate_limit_error"),
        (errors.ModelStreamError("broke"), 500, "api_error"),
        (errors.ModelTimeout("late"), 504, "timeout_error"),
        (errors.ServiceUnavailable("busy"), 529, "overloaded_error"),
        (errors.SluicegateError("oops"), 500, "api_error"),
    ],
)
def test_error_response(exc: errors.SluicegateError, status: int, kind: str) -> None:
    response = error_response(exc)
    assert response.status_code == status
    assert json.loads(response.body) == {
        "type": "error",
        "error": {"type": kind, "message": exc.message},
    }
    expected = None if exc.retry_after is None else str(exc.retry_after)
    assert response.headers.get("retry-after") == expected


def test_a_throttled_caller_is_told_when_to_retry() -> None:
    assert error_response(errors.Throttled("slow")).headers["retry-after"] == "1"
