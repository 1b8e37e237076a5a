"""The AWS error shape shared by the AWS-compatible routes."""

from __future__ import annotations

import hashlib

from starlette.responses import JSONResponse

from sluicegate import errors

ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


def error_response(exc: errors.SluicegateError, request_id: str = "") -> JSONResponse:
    """Status, `x-amzn-ErrorType` and `{"message"}`: boto3 raises the modelled exception."""
    headers = {"x-amzn-ErrorType": exc.aws + ERROR_NAMESPACE}
    if request_id:
        headers["x-amzn-RequestId"] = request_id
    return JSONResponse({"message": exc.message}, exc.status, headers=headers)


def caller(authorization: str) -> str:
    """Who is calling (not verified yet): the SigV4 access key id, or a digest of a Bearer key,
    so that the same caller is the same owner on every door."""
    if "Credential=" in authorization:
        return authorization.split("Credential=", 1)[1].split("/", 1)[0]
    if authorization.lower().startswith("bearer "):
        return "bearer:" + hashlib.sha256(authorization[7:].encode()).hexdigest()[:16]
    return ""
