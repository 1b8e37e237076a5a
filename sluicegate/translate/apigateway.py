"""API Gateway WebSocket proxy events, as Lambda handlers receive them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from sluicegate.bus.memory import Connection


def ws_event(
    conn: Connection,
    route_key: str,
    event_type: str,
    *,
    domain: str,
    stage: str,
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    closed: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """The event for $connect (headers, query), a message (body) or $disconnect (`closed`:
    the close code and reason)."""
    now = int(time.time() * 1000)
    context: dict[str, Any] = {
        "routeKey": route_key,
        "eventType": event_type,
        "messageDirection": "IN",
        "connectionId": conn.id,
        "requestId": str(uuid.uuid4()),
        "extendedRequestId": str(uuid.uuid4()),
        "apiId": "sluicegate",
        "domainName": domain,
        "stage": stage,
        "connectedAt": int(conn.connected_at.timestamp() * 1000),
        "requestTimeEpoch": now,
        "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
    }
    event: dict[str, Any] = {"requestContext": context, "isBase64Encoded": False}
    if event_type == "MESSAGE":
        context["messageId"] = uuid.uuid4().hex[:16]
        event["body"] = body or ""
    if closed is not None:
        context.update(disconnect_fields(*closed))
    if headers is not None:
        event["headers"] = dict(headers)
        event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    if query:  # absent, not null, when there is no query string
        event["queryStringParameters"] = dict(query)
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    return event


def refused(result: Any) -> bool:
    """A $connect result that refuses the connection: a non-2xx statusCode."""
    if not isinstance(result, dict) or "statusCode" not in result:
        return False
    try:
        return not 200 <= int(result["statusCode"]) < 300
    except (TypeError, ValueError):
        return True


# API Gateway's words for closes that carry no reason of their own.
CLOSE_REASONS = {1005: "Client-side close frame status not set", 1001: "Going away"}


def disconnect_fields(code: int, reason: str) -> dict[str, Any]:
    """`disconnectStatusCode` and `disconnectReason` of a $disconnect event's requestContext."""
    return {"disconnectStatusCode": code, "disconnectReason": reason or CLOSE_REASONS.get(code, "")}


def integration_error(message: str, connection_id: str, request_id: str) -> dict[str, str]:
    """What API Gateway sends the client when a route's integration fails or times out:
    `Internal server error`, `Endpoint request timed out`."""
    return {"message": message, "connectionId": connection_id, "requestId": request_id}
