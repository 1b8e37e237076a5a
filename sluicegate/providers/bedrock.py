"""The `bedrock` provider: a real Bedrock Runtime (or anything that speaks it, another sluicegate
included) through ConverseStream, or InvokeModelWithResponseStream with `api = "invoke"` (the
model family's own body: providers/invoke.py), async all the way: requests signed with
botocore's SigV4 signer from the standard AWS credential chain, the event stream read with our
own sans-IO decoder over the pooled HTTP client (no thread per stream, no boto3 call on the
event loop)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from sluicegate import errors
from sluicegate.codecs import eventstream, jsonbody
from sluicegate.codecs.eventstream import EventStreamDecoder, EventStreamError
from sluicegate.config import UpstreamSettings
from sluicegate.events import (
    ChatRequest,
    JsonPart,
    Message,
    StopReason,
    ToolChoice,
    ToolResult,
    ToolUse,
)
from sluicegate.generation import Meter
from sluicegate.providers import invoke
from sluicegate.providers.upstream import Finish, Outgoing, Piece, ToolInput, ToolStart, Upstream

FINISHES: dict[str, StopReason] = {
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_use",
}
# Exception frames by their :exception-type, as ours.
EXCEPTIONS: dict[str, type[errors.SluicegateError]] = {
    "throttlingException": errors.Throttled,
    "validationException": errors.ValidationError,
    "modelTimeoutException": errors.ModelTimeout,
    "serviceUnavailableException": errors.ServiceUnavailable,
    "internalServerException": errors.SluicegateError,
    "modelStreamErrorException": errors.ModelStreamError,
}
CONVERSE, INVOKE = "converse-stream", "invoke-with-response-stream"


class BedrockProvider(Upstream):
    """Streams from `endpoint_url`/model/{id}/converse-stream, or invoke-with-response-stream."""

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        super().__init__(name, settings)
        session = botocore.session.get_session()
        self.region = settings.region or session.get_config_variable("region") or "us-east-1"
        default = f"https://bedrock-runtime.{self.region}.amazonaws.com"
        self.endpoint = (settings.endpoint_url or default).rstrip("/")
        self._session = session

    def describe(self) -> str:
        api = "InvokeModelWithResponseStream" if self.invoking else "ConverseStream"
        return f"{self.name}: Bedrock Runtime at {self.endpoint} ({self.region}), {api}"

    @property
    def invoking(self) -> bool:
        return self.settings.api == "invoke"

    def outgoing(self, request: ChatRequest) -> Outgoing:
        if self.invoking:
            payload = invoke.shape_for(request.model).body(request)
            return self._signed(request.model, json.dumps(payload).encode(), INVOKE)
        return self._signed(request.model, json.dumps(body(request)).encode(), CONVERSE)

    def _signed(self, model: str, payload: bytes, operation: str) -> Outgoing:
        credentials = self._session.get_credentials()
        if credentials is None:
            raise errors.ServiceUnavailable(
                f"Provider {self.name}: no AWS credentials found (environment, profile, role)."
            )
        url = f"{self.endpoint}/model/{quote(model, safe='')}/{operation}"
        headers = {"content-type": "application/json"}
        if operation == INVOKE:
            headers["x-amzn-bedrock-accept"] = "application/json"
        aws = AWSRequest("POST", url, data=payload, headers=headers)
        SigV4Auth(credentials.get_frozen_credentials(), "bedrock", self.region).add_auth(aws)
        return Outgoing("POST", url, dict(aws.headers), payload)

    def pieces(self, response: aiohttp.ClientResponse, meter: Meter) -> AsyncIterator[Piece]:
        return self._chunks(response, meter) if self.invoking else self._converse(response, meter)

    async def _chunks(self, response: aiohttp.ClientResponse, meter: Meter) -> AsyncIterator[Piece]:
        """InvokeModelWithResponseStream: each `chunk` event holds one of the family's chunks,
        as base64 of its JSON."""
        reader = invoke.shape_for(_model_of(response.url.raw_path)).reader(self.name, meter)
        async for kind, data in self._events(response, meter):
            if kind == "chunk":  # read to the last: some families' usage follows their end
                for piece in reader.feed(self._chunk(data)):
                    yield piece
        if not reader.ended:
            raise errors.ModelStreamError(f"Provider {self.name} ended the stream mid-answer.")

    def _chunk(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            chunk = jsonbody.parse(base64.b64decode(data.get("bytes") or "", validate=True))
        except ValueError:  # not base64, not UTF-8, not JSON
            chunk = None
        if not isinstance(chunk, dict):
            raise errors.ModelStreamError(f"Provider {self.name} sent an unreadable chunk.")
        return chunk

    async def _converse(
        self, response: aiohttp.ClientResponse, meter: Meter
    ) -> AsyncIterator[Piece]:
        """ConverseStream's events to the end of the body (its usage follows messageStop); a
        body that ends before messageStop is a cut answer, never a normal end."""
        stopped = False
        async for kind, data in self._events(response, meter):
            if kind == "contentBlockDelta":
                delta = data.get("delta", {})
                text = delta.get("text")
                if isinstance(text, str):
                    yield text
                fragment = (delta.get("toolUse") or {}).get("input")
                if isinstance(fragment, str) and fragment:
                    yield ToolInput(fragment)
            elif kind == "contentBlockStart":
                use = data.get("start", {}).get("toolUse")
                if isinstance(use, dict):
                    yield ToolStart(str(use.get("toolUseId", "")), str(use.get("name", "")))
            elif kind == "messageStop":
                stopped = True
                yield Finish(FINISHES.get(str(data.get("stopReason")), "end_turn"))
            elif kind == "metadata":
                _usage(data, meter)
        if not stopped:
            raise errors.ModelStreamError(f"Provider {self.name} ended the stream mid-answer.")

    async def _events(
        self, response: aiohttp.ClientResponse, meter: Meter
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        decoder = EventStreamDecoder()
        async for raw in self.chunks(response, meter):
            try:
                messages = decoder.feed(raw)
            except EventStreamError as exc:
                raise errors.ModelStreamError(f"Provider {self.name}: {exc}") from None
            for message in messages:
                yield self._event(message)

    def _event(self, message: eventstream.Message) -> tuple[str, dict[str, Any]]:
        headers = message.headers
        try:
            data = jsonbody.parse(message.payload or b"{}")
        except ValueError:
            data = {}
        kind = str(headers.get(":message-type", "event"))
        if kind == "event":
            return str(headers.get(":event-type", "")), data if isinstance(data, dict) else {}
        name = str(headers.get(":exception-type") or headers.get(":error-code") or kind)
        text = data.get("message") if isinstance(data, dict) else None
        said = f"Provider {self.name} failed mid-stream ({name}): {text or headers}"
        raise EXCEPTIONS.get(name, errors.ModelStreamError)(said)


def body(request: ChatRequest) -> dict[str, Any]:
    """The Converse request; sampling the client left unset stays unset upstream."""
    config: dict[str, Any] = {"maxTokens": request.max_tokens}
    for key, value in (("temperature", request.temperature), ("topP", request.top_p)):
        if value is not None:
            config[key] = value
    if request.stop_sequences:
        config["stopSequences"] = list(request.stop_sequences)
    out: dict[str, Any] = {
        "messages": [{"role": m.role, "content": _content(m)} for m in request.messages],
        "inferenceConfig": config,
    }
    if request.tools:
        specs = [
            {"toolSpec": {"name": t.name, "description": t.description or t.name,
                          "inputSchema": {"json": t.input_schema}}}
            for t in request.tools
        ]  # fmt: skip
        out["toolConfig"] = {"tools": specs, **_tool_choice(request.tool_choice)}
    if request.system:
        out["system"] = [{"text": request.system}]
    if request.top_k is not None:
        out["additionalModelRequestFields"] = {"top_k": request.top_k}
    return out


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    """Converse's toolChoice; it has no word for none (the tools stay, the model chooses)."""
    if choice.kind == "tool":
        return {"toolChoice": {"tool": {"name": choice.name}}}
    if choice.kind == "any":
        return {"toolChoice": {"any": {}}}
    return {}


def _content(m: Message) -> list[dict[str, Any]]:
    """A turn's blocks: a user's tool results before its text, an assistant's calls after."""
    text = [{"text": m.text}] if m.text or not m.blocks else []
    uses = [
        {"toolUse": {"toolUseId": b.id, "name": b.name, "input": b.input}}
        for b in m.blocks if isinstance(b, ToolUse)
    ]  # fmt: skip
    results = [_result(b) for b in m.blocks if isinstance(b, ToolResult)]
    return [*results, *text, *uses]


def _result(r: ToolResult) -> dict[str, Any]:
    parts = [{"json": p.value} if isinstance(p, JsonPart) else {"text": p} for p in r.content]
    status = {"status": "error"} if r.is_error else {}
    return {"toolResult": {"toolUseId": r.tool_use_id, "content": parts or [{"text": ""}],
                           **status}}  # fmt: skip


def _usage(data: dict[str, Any], meter: Meter) -> None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        meter.usage.input_tokens = int(usage.get("inputTokens") or 0)
        meter.usage.output_tokens = int(usage.get("outputTokens") or 0)


def _model_of(path: str) -> str:
    """The model id in a request's path (/model/{id}/operation), as sent."""
    return unquote(path.split("/")[-2])
