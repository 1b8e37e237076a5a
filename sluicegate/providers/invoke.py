"""What the `bedrock` provider sends and reads with `api = "invoke"`: InvokeModelWithResponseStream
bodies in the model family's own shape, and readers of the family's decoded `chunk`s.

The family follows from the model id as on Bedrock (translate/families: the provider prefix after
any inference-profile prefix or ARN). Anthropic Messages is the body for `anthropic.claude-*`
and for ids no family claims (another sluicegate serves those as Messages too); Meta Llama takes
its prompt in Llama 3's chat template; Amazon Nova the messages-v1 schema (its chunks are
Converse's events); OpenAI's gpt-oss a Chat Completions body (its chunks are chat.completion
chunks). Other families' ids (Titan, Mistral, Cohere, Claude's text completions) are refused
before anything is sent: ConverseStream (`api = "converse"`) speaks to every model.
"""

from __future__ import annotations

from typing import Any, Protocol

from sluicegate import errors
from sluicegate.events import ChatRequest, StopReason
from sluicegate.generation import Meter
from sluicegate.providers import anthropic, openai
from sluicegate.providers.upstream import Finish, Piece
from sluicegate.translate import families


class Reader(Protocol):
    """One stream's chunks (decoded JSON objects) as pieces; `ended` once the last came."""

    ended: bool

    def feed(self, chunk: dict[str, Any]) -> list[Piece]: ...


class Shape(Protocol):
    """A family as an upstream: the body it takes and the reader of its chunks."""

    def body(self, request: ChatRequest) -> dict[str, Any]: ...

    def reader(self, name: str, meter: Meter) -> Reader: ...


class Messages:
    def body(self, request: ChatRequest) -> dict[str, Any]:
        return anthropic.bedrock_body(request)

    def reader(self, name: str, meter: Meter) -> Reader:
        return anthropic.MessagesReader(name, meter)


LLAMA_STOPS: dict[str, StopReason] = {"length": "max_tokens"}


def _plain(request: ChatRequest, family: str) -> None:
    """Families whose InvokeModel body carries no tools here: ConverseStream does."""
    if request.tools or any(m.blocks for m in request.messages):
        raise errors.ValidationError(
            f"Tools are not sent on {family}'s InvokeModel body: route this model to a "
            'bedrock provider with api = "converse".'
        )


class Llama:
    def body(self, request: ChatRequest) -> dict[str, Any]:
        _plain(request, "Llama")
        if request.stop_sequences:
            raise errors.ValidationError(
                "Llama's InvokeModel body has no stop sequences: route this model to a "
                'bedrock provider with api = "converse".'
            )
        out: dict[str, Any] = {"prompt": llama3_prompt(request), "max_gen_len": request.max_tokens}
        for key, value in (("temperature", request.temperature), ("top_p", request.top_p)):
            if value is not None:
                out[key] = value
        return out

    def reader(self, name: str, meter: Meter) -> Reader:
        return LlamaReader(meter)


class LlamaReader:
    """`generation` text in every chunk, the counts so far, `stop_reason` in the last."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.ended = False

    def feed(self, chunk: dict[str, Any]) -> list[Piece]:
        usage = self.meter.usage
        if isinstance(chunk.get("prompt_token_count"), int):
            usage.input_tokens = chunk["prompt_token_count"]
        text = chunk.get("generation")
        out: list[Piece] = [text] if isinstance(text, str) and text else []
        reason = chunk.get("stop_reason")
        if not isinstance(reason, str):
            return out
        self.ended = True
        counted = chunk.get("generation_token_count")
        metrics = chunk.get("amazon-bedrock-invocationMetrics")
        if isinstance(metrics, dict):
            usage.input_tokens = int(metrics.get("inputTokenCount") or usage.input_tokens)
            counted = metrics.get("outputTokenCount", counted)
        if isinstance(counted, int):
            usage.output_tokens = counted - len(out)  # the stream counts this chunk's text next
        return [*out, Finish(LLAMA_STOPS.get(reason, "end_turn"))]


def llama3_prompt(request: ChatRequest) -> str:
    """The conversation in Llama 3's chat template, open for the assistant's answer."""

    def turn(role: str, text: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>"

    system = [turn("system", request.system)] if request.system else []
    turns = [turn(m.role, m.text) for m in request.messages]
    opening = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return "<|begin_of_text|>" + "".join([*system, *turns]) + opening


NOVA_STOPS: dict[str, StopReason] = {"max_tokens": "max_tokens", "stop_sequence": "stop_sequence"}


class Nova:
    def body(self, request: ChatRequest) -> dict[str, Any]:
        _plain(request, "Amazon Nova")
        config: dict[str, Any] = {"maxTokens": request.max_tokens}
        optional = {
            "temperature": request.temperature,
            "topP": request.top_p,
            "topK": request.top_k,
            "stopSequences": list(request.stop_sequences) or None,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        out: dict[str, Any] = {
            "schemaVersion": "messages-v1",
            "messages": [{"role": m.role, "content": [{"text": m.text}]} for m in request.messages],
            "inferenceConfig": config,
        }
        if request.system:
            out["system"] = [{"text": request.system}]
        return out

    def reader(self, name: str, meter: Meter) -> Reader:
        return NovaReader(meter)


class NovaReader:
    """Converse's events, one a chunk: text deltas, messageStop, then metadata's usage."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.ended = False

    def feed(self, chunk: dict[str, Any]) -> list[Piece]:
        delta = (chunk.get("contentBlockDelta") or {}).get("delta") or {}
        if isinstance(delta.get("text"), str) and delta["text"]:
            return [delta["text"]]
        if "messageStop" in chunk:
            self.ended = True
            reason = str((chunk["messageStop"] or {}).get("stopReason"))
            return [Finish(NOVA_STOPS.get(reason, "end_turn"))]
        usage = (chunk.get("metadata") or {}).get("usage")
        if isinstance(usage, dict):
            self.meter.usage.input_tokens = int(usage.get("inputTokens") or 0)
            self.meter.usage.output_tokens = int(usage.get("outputTokens") or 0)
        return []


class OpenAIChat:
    def body(self, request: ChatRequest) -> dict[str, Any]:
        _plain(request, "OpenAI's gpt-oss")
        out = openai.body(request)
        del out["model"], out["stream"], out["stream_options"]  # the call says those
        return out

    def reader(self, name: str, meter: Meter) -> Reader:
        return OpenAIChatReader(meter)


class OpenAIChatReader:
    """chat.completion chunks: content deltas, the finish_reason and usage in the last."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.ended = False

    def feed(self, chunk: dict[str, Any]) -> list[Piece]:
        out: list[Piece] = list(openai.chunk_texts(chunk))
        finish = openai.first_choice(chunk).get("finish_reason")
        if isinstance(finish, str):
            self.ended = True
            out.append(Finish(openai.FINISHES.get(finish, "end_turn")))
            openai.chunk_usage(chunk, self.meter)
            if out and isinstance(out[0], str):
                self.meter.usage.output_tokens -= 1  # the stream counts this chunk's text next
        return out


SHAPES: dict[str, Shape] = {
    "meta-llama": Llama(),
    "amazon-nova": Nova(),
    "openai-chat-completions": OpenAIChat(),
}
MESSAGES = Messages()


def shape_for(model_id: str) -> Shape:
    """The body and chunk shape of a model id's family (ValidationError for families this
    provider does not speak on InvokeModel)."""
    base = families.base_model(model_id)
    for prefixes, family in families.TABLE:
        if base.startswith(prefixes):
            found = SHAPES.get(family.name)
            if found is None:
                raise errors.ValidationError(
                    f"Model {model_id!r} takes the {family.name} InvokeModel body, which this "
                    'provider does not send: use api = "converse" for it.'
                )
            return found
    return MESSAGES
