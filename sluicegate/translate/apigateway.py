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
) -> dict[str, Any]:
    """The event for $connect (headers, query), a message (body) or $disconnect."""
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
