"""Lambda functions behind Function URLs, the REST API emulation and the Lambda invoke APIs.

/fn/NAME/...                       Function URL (payload 2.0), BUFFERED or RESPONSE_STREAM
/rest/NAME/...                     REST API proxy integration (payload 1.0), 29 s timeout
POST /2015-03-31/functions/NAME/invocations                 Invoke
POST /2021-11-15/functions/NAME/response-streaming-invocations  InvokeWithResponseStream
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluicegate import errors, functions, handlers
from sluicegate.codecs import eventstream
from sluicegate.config import FunctionSettings, Settings
from sluicegate.routes.aws import (
    address,
    error_response,
    require_local_without_key,
    require_signature,
)
from sluicegate.routes.streaming import StreamResponse, read_limited
from sluicegate.translate import lambda_events

log = logging.getLogger(__name__)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
EVENTSTREAM = "application/vnd.amazon.eventstream"


class Functions:
    """The configured functions, loaded at start-up."""

    def __init__(self, settings: Settings, loaded: dict[str, handlers.Handler]) -> None:
        self.settings = settings
        self.loaded = loaded
        self.background: set[asyncio.Task[None]] = set()  # Event invocations still running

    def get(self, name: str) -> tuple[FunctionSettings, handlers.Handler]:
        if name not in self.loaded:
            raise errors.NotFound(f"Function not found: {name}")
        return self.settings.functions[name], self.loaded[name]

    def routes(self) -> list[Route]:
        return [
            Route("/fn/{name}/{path:path}", self.function_url, methods=METHODS),
            Route("/fn/{name}", self.function_url, methods=METHODS),
            Route("/rest/{name}/{path:path}", self.rest, methods=METHODS),
            Route("/2015-03-31/functions/{name}/invocations", self.invoke, methods=["POST"]),
            Route(
                "/2021-11-15/functions/{name}/response-streaming-invocations",
                self.invoke_stream,
                methods=["POST"],
            ),
        ]

    # -- Function URLs ------------------------------------------------------------------------

    async def function_url(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            config, handler = self.get(name)
            call = await self._http_call(request, name)
        except errors.NotFound as exc:
            return JSONResponse({"Message": exc.message}, 404)
        except errors.RequestTooLarge as exc:
            return JSONResponse({"Message": exc.message}, 413)
        event = lambda_events.function_url_event(call)
        stream = config.invoke_mode == "RESPONSE_STREAM"
        return await self._respond(name, handler, event, config.timeout_seconds, stream)

    async def rest(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            config, handler = self.get(name)
            call = await self._http_call(request, name)
        except errors.NotFound:
            return JSONResponse({"message": "Not Found"}, 404)
        except errors.RequestTooLarge:  # API Gateway's own answer past its 10 MB
            return JSONResponse({"message": "Request Too Long"}, 413)
        event = lambda_events.rest_event(call)
        if name in self.settings.rest_stream:
            return await self._respond(name, handler, event, config.timeout_seconds, True)
        timeout = min(self.settings.rest_timeout_seconds, config.timeout_seconds)
        response = await self._respond(name, handler, event, timeout, False)
        if response.status_code == 504:  # the integration timed out: API Gateway's own answer
            return JSONResponse({"message": "Endpoint request timed out"}, 504)
        if response.status_code == 502:  # the function failed: API Gateway's own answer
            return JSONResponse({"message": "Internal server error"}, 502)
        return response

    async def _respond(
        self,
        name: str,
        handler: handlers.Handler,
        event: dict[str, Any],
        seconds: float,
        stream: bool,
    ) -> Response:
        context = handlers.LambdaContext(name, seconds)
        try:
            result = await functions.invoke(handler, event, context)
            if stream:
                return self._streamed(name, result, context)
            body = await functions.collect(result, context)
        except errors.ModelTimeout as exc:
            log.error("%s: %s", name, exc.message)
            return JSONResponse({"Message": exc.message}, 504)
        except functions.FunctionError as exc:  # Lambda's own verdict on the result
            log.error("function %s: %s", name, exc)
            return JSONResponse({"Message": str(exc)}, 502)
        except Exception:
            # Public endpoints: the error and its stack trace go to the log, never to whoever
            # called (the Lambda API's `invoke` gives them to the authorized caller).
            log.exception("function %s failed", name)
            return Response("Internal Server Error", 502, media_type="text/plain")
        return _with_cookies(Response(body, result.status, headers=result.headers), result)

    def _streamed(
        self, name: str, result: functions.Result, context: handlers.LambdaContext
    ) -> Response:
        pieces = functions.until_deadline(functions.chunks(result), context)
        response = StreamResponse(
            _logged(name, pieces), None, result.headers, status_code=result.status
        )
        return _with_cookies(response, result)

    # -- the Lambda API ------------------------------------------------------------------------

    async def _http_call(self, request: Request, name: str) -> lambda_events.HttpCall:
        return lambda_events.HttpCall(
            function=name,
            method=request.method,
            path="/" + request.path_params.get("path", ""),
            raw_query=request.url.query,
            headers=request.headers,
            query=request.query_params,
            source_ip=address(request),
            domain=self.settings.public_host,
            body=await lambda_body(request, functions.REQUEST_LIMIT),
        )

    async def _invocation(
        self, request: Request
    ) -> tuple[handlers.Handler, Any, handlers.LambdaContext]:
        """The Lambda API's request: the function's handler, its event and context."""
        name = request.path_params["name"]
        config, handler = self.get(name)
        require_local_without_key(request, self.settings.api_key, "the Lambda API")
        body = await lambda_body(request, functions.REQUEST_LIMIT)
        require_signature(request, body)
        return handler, _payload(body), handlers.LambdaContext(name, config.timeout_seconds)

    async def invoke(self, request: Request) -> Response:
        """Invoke: RequestResponse answers the function's payload (its failure as Lambda's
        Unhandled function error, with a 200), Event 202 at once while it runs in the
        background, DryRun 204. Never a bare 500: faults of our own are ServiceException."""
        try:
            return await self._invoke(request, invocation_type(request, INVOKE_TYPES))
        except errors.SluicegateError as exc:
            return error_response(exc)
        except Exception:
            log.exception("the Lambda API failed on %s", request.url.path)
            return error_response(errors.ServiceException("The Lambda API failed: see its log."))

    async def _invoke(self, request: Request, kind: str) -> Response:
        handler, event, context = await self._invocation(request)
        if kind == "DryRun":
            return Response(status_code=204, headers=_request_id(context))
        if kind == "Event":
            self._in_background(handler, event, context)
            return Response(status_code=202, headers=_request_id(context))
        try:
            payload = await functions.invocation_payload(
                await handlers.call(handler, event, context), context
            )
        except Exception as exc:
            log.exception("function %s failed", context.function_name)
            error = functions.error_payload(exc, context.aws_request_id)
            headers = {**_request_id(context), "X-Amz-Function-Error": "Unhandled"}
            return JSONResponse(error, 200, headers={**headers, **EXECUTED})
        headers = {**_request_id(context), **EXECUTED}
        return Response(payload, 200, media_type="application/json", headers=headers)

    def _in_background(
        self, handler: handlers.Handler, event: Any, context: handlers.LambdaContext
    ) -> None:
        """An asynchronous invocation: runs to its end (or timeout); a failure is logged."""

        async def run() -> None:
            try:
                await functions.invocation_payload(
                    await handlers.call(handler, event, context), context
                )
            except Exception:
                log.exception("function %s failed (InvocationType=Event)", context.function_name)

        task = asyncio.create_task(run(), name=f"function {context.function_name} (Event)")
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def invoke_stream(self, request: Request) -> Response:
        try:
            kind = invocation_type(request, STREAM_INVOKE_TYPES)
            handler, event, context = await self._invocation(request)
        except errors.SluicegateError as exc:
            return error_response(exc)
        if kind == "DryRun":
            return Response(status_code=204, headers=_request_id(context))
        headers = {**_request_id(context), **EXECUTED}
        name = request.path_params["name"]
        return StreamResponse(_payload_chunks(name, handler, event, context), EVENTSTREAM, headers)


INVOKE_TYPES = ("RequestResponse", "Event", "DryRun")
STREAM_INVOKE_TYPES = ("RequestResponse", "DryRun")
EXECUTED = {"X-Amz-Executed-Version": "$LATEST"}


def invocation_type(request: Request, allowed: tuple[str, ...]) -> str:
    kind = request.headers.get("x-amz-invocation-type", "RequestResponse")
    if kind not in allowed:
        raise errors.InvalidParameterValue(
            f"Invalid InvocationType {kind!r}: expected one of {', '.join(allowed)}."
        )
    return kind


def _request_id(context: handlers.LambdaContext) -> dict[str, str]:
    return {"x-amzn-RequestId": context.aws_request_id}


async def _payload_chunks(
    name: str, handler: handlers.Handler, event: Any, context: handlers.LambdaContext
) -> AsyncGenerator[bytes, None]:
    """PayloadChunk events as the handler yields, then InvokeComplete (with any error)."""
    complete: dict[str, str] = {}
    try:
        value = await handlers.call(handler, event, context)
        result = functions.normalise(value)
        if isinstance(value, dict) and "statusCode" not in value:
            result.body = json.dumps(value)
        async for piece in functions.until_deadline(functions.chunks(result), context):
            yield eventstream.event("PayloadChunk", piece, "application/octet-stream")
    except errors.ModelTimeout as exc:
        log.error("%s: %s", name, exc.message)
        complete = {"ErrorCode": "Sandbox.Timedout", "ErrorDetails": exc.message}
    except Exception as exc:
        log.exception("function %s failed", name)
        complete = {
            "ErrorCode": "Unhandled",
            "ErrorDetails": json.dumps(functions.error_payload(exc, context.aws_request_id)),
        }
    yield eventstream.event("InvokeComplete", json.dumps(complete).encode())


async def _logged(name: str, pieces: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """A stream that already started ends cleanly on a failure; the traceback goes to the log."""
    try:
        async for piece in pieces:
            yield piece
    except errors.ModelTimeout as exc:
        log.error("%s: %s", name, exc.message)  # the stream ends there, as on Lambda
    except Exception:
        log.exception("function %s failed mid-stream", name)
    finally:
        await pieces.aclose()


def _with_cookies(response: Response, result: functions.Result) -> Response:
    for cookie in result.cookies:
        response.raw_headers.append((b"set-cookie", cookie.encode()))
    return response


def _payload(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return raw.decode("utf-8", "replace")


async def lambda_body(request: Request, limit: int) -> bytes:
    """A request body within Lambda's payload limit, refused before it is read past it."""
    try:
        return await read_limited(request, limit)
    except errors.PayloadTooLarge:
        raise errors.RequestTooLarge(
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
        ) from None
