"""What the AWS-compatible routes share: the error shape, the caller, SigV4 verification."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Sequence

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from sluicegate import errors

ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


def error_response(exc: errors.SluicegateError, request_id: str = "") -> JSONResponse:
    """Status, `x-amzn-ErrorType` and `{"message"}`: boto3 raises the modelled exception."""
    headers = {"x-amzn-ErrorType": exc.aws + ERROR_NAMESPACE}
    if request_id:
        headers["x-amzn-RequestId"] = request_id
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    return JSONResponse({"message": exc.message}, exc.status, headers=headers)


def caller(authorization: str) -> str:
    """Who is calling (not verified yet): the SigV4 access key id, or a digest of a Bearer key,
    so that the same caller is the same owner on every door."""
    if "Credential=" in authorization:
        return authorization.split("Credential=", 1)[1].split("/", 1)[0]
    if authorization.lower().startswith("bearer "):
        return "bearer:" + hashlib.sha256(authorization[7:].encode()).hexdigest()[:16]
    return ""


def presented_key(request: HTTPConnection) -> str:
    """The key a request carries as `x-api-key` or as a Bearer token ("" for none)."""
    authorization = request.headers.get("authorization", "")
    bearer = authorization[7:] if authorization.lower().startswith("bearer ") else ""
    return request.headers.get("x-api-key") or bearer


def key_owner(request: HTTPConnection, api_key: str | None) -> str | None:
    """The owner the presented key names (the digest `caller` gives a Bearer key; "" for no
    key), or None if it is not the configured api_key."""
    key = presented_key(request)
    if api_key and not hmac.compare_digest(key.encode(), api_key.encode()):
        return None
    return caller(f"Bearer {key}") if key else ""


SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s]+)/(?P<date>\d{8})/(?P<region>[^/\s]+)/"
    r"(?P<service>[^/\s]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
CLOCK_SKEW = datetime.timedelta(minutes=15)  # as AWS: older or newer signatures are refused


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def address(conn: HTTPConnection) -> str:
    """The client's address: what per-caller limits count (an owner is only claimed)."""
    return conn.client.host if conn.client else ""


def require_local_without_key(request: Request, api_key: str | None, what: str) -> None:
    """Without an api_key nothing proves who calls: management APIs answer this machine only."""
    if api_key is None and address(request) not in LOOPBACK:
        raise errors.Forbidden(
            f"Forbidden: without an api_key, {what} answers callers on this machine only "
            "(configure api_key to call it from elsewhere)."
        )


def require_signature(request: Request, body: bytes) -> None:
    """With an api_key configured, an AWS API call must prove it knows the key (`authorized`)."""
    api_key = request.app.state.gateway.settings.api_key
    if api_key and not authorized(request, body, api_key, request.app.state.signing_secrets):
        raise errors.InvalidSignature(
            "The request signature we calculated does not match the signature you provided: "
            "sign with the configured api_key as the secret access key."
        )


def authorized(request: Request, body: bytes, api_key: str, secrets: Sequence[str]) -> bool:
    """A request that carries the key as a Bearer token, or a SigV4 signature that verifies
    with one of `secrets` (the key, and any secret handlers find in their environment)."""
    auth = request.headers.get("authorization", "")
    if hmac.compare_digest(auth.encode(), f"Bearer {api_key}".encode()):
        return True
    return auth.startswith("AWS4-HMAC-SHA256 ") and any(
        sigv4_valid(request, body, secret) for secret in secrets
    )


def sigv4_valid(request: Request, body: bytes, secret: str) -> bool:
    """Whether the request is SigV4-signed with `secret` (any access key id), recently.

    The canonical request is rebuilt from what arrived (the raw path, the headers the client
    signed, the body) and signed again with botocore's own signer."""
    found = SIGV4.match(request.headers.get("authorization", ""))
    amz_date = request.headers.get("x-amz-date", "")
    if found is None or not amz_date.startswith(found["date"]):
        return False
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return False
    if abs(datetime.datetime.now(datetime.UTC) - when) > CLOCK_SKEW:
        return False
    claimed = request.headers.get("x-amz-content-sha256")
    if claimed == "UNSIGNED-PAYLOAD" and body:
        return False  # these APIs sign their bodies on AWS: unsigned, any body could be sent
    if claimed not in (None, "UNSIGNED-PAYLOAD") and claimed != hashlib.sha256(body).hexdigest():
        return False
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = f"{request.url.scheme}://{request.url.netloc}{raw_path.decode('latin-1')}"
    signed = {name: request.headers.get(name, "") for name in found["signed"].split(";")}
    aws = AWSRequest(method=request.method, url=url + (f"?{query}" if query else ""), data=body)
    for name, value in signed.items():
        aws.headers[name] = value
    aws.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(found["key"], secret), found["service"], found["region"])
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    return hmac.compare_digest(expected, found["signature"])
