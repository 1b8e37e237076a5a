"""The OpenAI-format models Bedrock serves (`openai.gpt-oss-*`): a Chat Completions body in
(`model` and `stream` may be left out); a `chat.completion` out, streamed as
`chat.completion.chunk`s, the last one with the `finish_reason` and the usage."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sluicegate.events import ChatRequest
from sluicegate.translate import openai, openai_fields
from sluicegate.translate.families.base import Answer, Json, TextFamily


class OpenAIChat(TextFamily):
    name = "openai-chat-completions"
    stops = openai.FINISH

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        # Bedrock fills in `model` and `stream` from the call when they are left out.
        call = openai.parse_chat_body({**body, "model": body.get("model") or model})
        if call.request.tools:
            raise openai_fields.unsupported(
                "tools", "tool use on this model family's InvokeModel body"
            )
        return call.request

    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        message = {"role": "assistant", "content": answer.text, "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": self.stop(answer)}
        return {**self._head(answer, "chat.completion"), "choices": [choice], **_usage(answer)}

    def opening(self, answer: Answer) -> list[Json]:
        return [self._chunk(answer, {"role": "assistant", "content": ""}, None)]

    def piece(self, text: str, sent: Answer) -> Json:
        return self._chunk(sent, {"content": text}, None)

    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        return [{**self._chunk(answer, {}, self.stop(answer)), **_usage(answer)}]

    def _chunk(self, answer: Answer, delta: Json, finish: str | None) -> Json:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**self._head(answer, "chat.completion.chunk"), "choices": [choice]}

    def _head(self, answer: Answer, kind: str) -> Json:
        created = int(time.time())
        return {
            "id": "chatcmpl-" + answer.id,
            "object": kind,
            "created": created,
            "model": answer.model,
        }


def _usage(answer: Answer) -> Json:
    return {"usage": openai.usage_json(answer.usage)}


FAMILY = OpenAIChat()
