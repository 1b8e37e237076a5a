"""Amazon Titan Text (`amazon.titan-text-*`, `amazon.titan-tg1-*`): `inputText` and
`textGenerationConfig` in; `results[0].outputText` out, streamed as chunks with `outputText`,
`completionReason` (null until the last) and token counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluicegate.events import ChatRequest, Message
from sluicegate.translate import anthropic
from sluicegate.translate.families.base import Answer, Json, TextFamily, obj, text

CONFIG = "#/textGenerationConfig"
CONFIG_KEYS = {"temperature", "topP", "maxTokenCount", "stopSequences"}
DEFAULT_MAX_TOKENS = 512


STOPS = {"end_turn": "FINISH", "stop_sequence": "STOP_CRITERIA_MET", "max_tokens": "LENGTH"}


class Titan(TextFamily):
    name = "amazon-titan-text"
    stops = STOPS

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        anthropic.check_keys(body, {"inputText", "textGenerationConfig"}, set())
        prompt = text(body, "inputText")
        config = obj(body, "textGenerationConfig")
        anthropic.check_keys(config, CONFIG_KEYS, set(), CONFIG)
        return ChatRequest(
            model=model,
            messages=(Message("user", prompt),),
            max_tokens=anthropic.integer(
                config, "maxTokenCount", 1, default=DEFAULT_MAX_TOKENS, where=CONFIG
            ),
            temperature=anthropic.number(config, "temperature", 0.0, 1.0, CONFIG),
            top_p=anthropic.number(config, "topP", 0.0, 1.0, CONFIG),
            stop_sequences=anthropic.string_list(config, "stopSequences", CONFIG),
        )

    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        result = {
            "tokenCount": answer.usage.output_tokens,
            "outputText": answer.text,
            "completionReason": self.stop(answer),
        }
        return {"inputTextTokenCount": answer.usage.input_tokens, "results": [result]}

    def piece(self, text: str, sent: Answer) -> Json:
        first = sent.pieces == 1
        return self._chunk(text, None, None, sent.usage.input_tokens if first else None)

    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        first = answer.pieces == 0
        inputs = answer.usage.input_tokens if first else None
        return [self._chunk("", answer.usage.output_tokens, self.stop(answer), inputs)]

    def _chunk(self, text: str, total: int | None, reason: str | None, inputs: int | None) -> Json:
        return {
            "outputText": text,
            "index": 0,
            "totalOutputTextTokenCount": total,
            "completionReason": reason,
            "inputTextTokenCount": inputs,
        }


FAMILY = Titan()
