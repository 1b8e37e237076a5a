"""Amazon Nova (`amazon.nova-*`), the messages-v1 schema: `messages` with `[{"text"}]`
content, `system`, `inferenceConfig` in; `output.message.content[0].text`, `stopReason` and
`usage` out; streamed as `messageStart`, `contentBlockDelta` ..., `contentBlockStop`,
`messageStop` and `metadata` chunks, one event per chunk (Converse's events, as JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluicegate.errors import ValidationError
from sluicegate.events import ChatRequest, Message
from sluicegate.translate import anthropic
from sluicegate.translate.families.base import Answer, Json, TextFamily, kind, obj

KEYS = {"schemaVersion", "system", "messages", "inferenceConfig"}
UNSUPPORTED = {"toolConfig"}
CONFIG = "#/inferenceConfig"
# Nova's names, and the snake_case ones its first published samples used.
CONFIG_KEYS = {
    "maxTokens", "max_new_tokens", "temperature", "topP", "top_p", "topK", "top_k",
    "stopSequences",
}  # fmt: skip
DEFAULT_MAX_TOKENS = 2048
BLOCKS = {"image", "video", "document", "toolUse", "toolResult", "reasoningContent"}


STOPS = {"end_turn": "end_turn", "stop_sequence": "stop_sequence", "max_tokens": "max_tokens"}


class Nova(TextFamily):
    name = "amazon-nova"
    stops = STOPS

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        anthropic.check_keys(body, KEYS, UNSUPPORTED)
        if body.get("schemaVersion", "messages-v1") != "messages-v1":
            raise anthropic.malformed("#/schemaVersion: expected 'messages-v1'")
        anthropic.require(body, "messages")
        config = obj(body, "inferenceConfig")
        anthropic.check_keys(config, CONFIG_KEYS, {"reasoningConfig"}, CONFIG)
        limit = "maxTokens" if "maxTokens" in config else "max_new_tokens"
        return ChatRequest(
            model=model,
            messages=_messages(body["messages"]),
            system=_system(body.get("system", [])),
            max_tokens=anthropic.integer(
                config, limit, 1, default=DEFAULT_MAX_TOKENS, where=CONFIG
            ),
            temperature=anthropic.number(config, "temperature", 0.0, 1.0, CONFIG),
            top_p=_either(config, "topP", "top_p"),
            top_k=anthropic.optional_integer(
                config, "topK" if "topK" in config else "top_k", 0, CONFIG
            ),
            stop_sequences=anthropic.string_list(config, "stopSequences", CONFIG),
        )

    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        u = answer.usage
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": answer.text}]}},
            "stopReason": self.stop(answer),
            "usage": {
                "inputTokens": u.input_tokens,
                "outputTokens": u.output_tokens,
                "totalTokens": u.input_tokens + u.output_tokens,
                "cacheReadInputTokenCount": 0,
                "cacheWriteInputTokenCount": 0,
            },
        }

    def opening(self, answer: Answer) -> list[Json]:
        return [{"messageStart": {"role": "assistant"}}]

    def piece(self, text: str, sent: Answer) -> Json:
        return {"contentBlockDelta": {"delta": {"text": text}, "contentBlockIndex": 0}}

    def block_end(self, index: int) -> list[Json]:
        return [{"contentBlockStop": {"contentBlockIndex": index}}]

    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        u = answer.usage
        usage = {"inputTokens": u.input_tokens, "outputTokens": u.output_tokens}
        return [
            {"messageStop": {"stopReason": self.stop(answer)}},
            {"metadata": {"usage": usage, "metrics": {}, "trace": {}}},
        ]


def _either(config: Mapping[str, Any], key: str, other: str) -> float | None:
    return anthropic.number(config, key if key in config else other, 0.0, 1.0, CONFIG)


def _system(value: Any) -> str:
    if not isinstance(value, list):
        raise anthropic.malformed(f"#/system: expected type: JSONArray, found: {kind(value)}")
    return "\n".join(_block_text(b, f"#/system/{i}") for i, b in enumerate(value))


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise anthropic.malformed("#/messages: expected a non-empty list of messages")
    out: list[Message] = []
    for i, m in enumerate(value):
        where = f"#/messages/{i}"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise anthropic.malformed(f"{where}/role: expected 'user' or 'assistant'")
        anthropic.check_keys(m, {"role", "content"}, set(), where)
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ValidationError(
                "A conversation must alternate between user and assistant roles, starting "
                f"with user; messages[{i}] has role {m['role']!r}."
            )
        content = m.get("content")
        if not isinstance(content, list) or not content:
            raise anthropic.malformed(f"{where}/content: expected a non-empty list of blocks")
        text = "".join(_block_text(b, f"{where}/content/{j}") for j, b in enumerate(content))
        out.append(Message(m["role"], text))
    return tuple(out)


def _block_text(block: Any, where: str) -> str:
    if isinstance(block, dict) and isinstance(block.get("text"), str):
        return str(block["text"])
    named = next(iter(block), None) if isinstance(block, dict) else None
    if named in BLOCKS:
        raise ValidationError(f"{where}: {named} blocks are not supported yet; send text blocks.")
    raise anthropic.malformed(f'{where}: expected a content block such as {{"text": "..."}}')


FAMILY = Nova()
