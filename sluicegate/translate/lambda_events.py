"""The events Lambda handlers receive from Function URLs (payload 2.0) and REST APIs (1.0)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-www-form-urlencoded")


def body_fields(body: bytes, content_type: str) -> dict[str, Any]:
    """`body` as text when it is text, else base64 (as AWS encodes it)."""
    if not body:
        return {"isBase64Encoded": False}
    if not content_type or content_type.startswith(TEXT_TYPES):
        try:
            return {"body": body.decode("utf-8"), "isBase64Encoded": False}
        except UnicodeDecodeError:
            pass
    return {"body": base64.b64encode(body).decode(), "isBase64Encoded": True}


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request to a function: what either kind of event is made from."""

    function: str
    method: str
    path: str  # below the function's own prefix, starting with "/"
    raw_query: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    source_ip: str
    domain: str
    body: bytes


def function_url_event(call: HttpCall) -> dict[str, Any]:
    """Lambda Function URL (payload 2.0)."""
    function, method, path, query = call.function, call.method, call.path, call.query
    now = time.time()
    lowered = {k.lower(): v for k, v in call.headers.items()}
    cookies = [c.strip() for c in lowered.pop("cookie", "").split(";") if c.strip()]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": call.raw_query,
        "headers": lowered,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": function,
            "domainName": call.domain,
            "domainPrefix": function,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": call.source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        **body_fields(call.body, lowered.get("content-type", "")),
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = dict(query)
    return event


def rest_event(call: HttpCall) -> dict[str, Any]:
    """API Gateway REST API, Lambda proxy integration (payload 1.0)."""
    function, method, path, query = call.function, call.method, call.path, call.query
    now = time.time()
    plain = dict(call.headers)
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": plain,
        "multiValueHeaders": {k: [v] for k, v in plain.items()},
        "queryStringParameters": dict(query) or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/rest/{function}{path}",
            "stage": "rest",
            "domainName": call.domain,
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": call.source_ip, "userAgent": plain.get("user-agent", "")},
        },
        **body_fields(call.body, plain.get("content-type", "")),
    }
