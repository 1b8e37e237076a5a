"""The AWS error shape shared by the AWS-compatible routes."""

from __future__ import annotations

from starlette.responses import JSONResponse

from sluicegate import errors

ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


def error_response(exc: errors.SluicegateError, request_id: str = "") -> JSONResponse:
    """Status, `x-amzn-ErrorType` and `{"message"}`: boto3 raises the modelled exception."""
    headers = {"x-amzn-ErrorType": exc.aws + ERROR_NAMESPACE}
    if request_id:
        headers["x-amzn-RequestId"] = request_id
    return JSONResponse({"message": exc.message}, exc.status, headers=headers)
