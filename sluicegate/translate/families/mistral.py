"""Mistral AI text completions (`mistral.*`): `prompt` (often `<s>[INST] ... [/INST]`) and
`max_tokens` in; `outputs[0].text` and `outputs[0].stop_reason` out, in every chunk too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluicegate.events import ChatRequest
from sluicegate.translate import anthropic
from sluicegate.translate.families import prompts
from sluicegate.translate.families.base import Answer, Json, TextFamily, text

KEYS = {"prompt", "max_tokens", "stop", "temperature", "top_p", "top_k"}
DEFAULT_MAX_TOKENS = 512


STOPS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class Mistral(TextFamily):
    name = "mistral-text-completion"
    stops = STOPS

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        anthropic.check_keys(body, KEYS, set())
        system, turns = prompts.conversation(text(body, "prompt"))
        return ChatRequest(
            model=model,
            messages=turns,
            system=system,
            max_tokens=anthropic.integer(body, "max_tokens", 1, default=DEFAULT_MAX_TOKENS),
            temperature=anthropic.number(body, "temperature", 0.0, 1.0),
            top_p=anthropic.number(body, "top_p", 0.0, 1.0),
            top_k=anthropic.optional_integer(body, "top_k", 0),
            stop_sequences=anthropic.string_list(body, "stop"),
        )

    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        return self._outputs(answer.text, self.stop(answer))

    def piece(self, text: str, sent: Answer) -> Json:
        return self._outputs(text, None)

    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        return [self._outputs("", self.stop(answer))]

    def _outputs(self, text: str, reason: str | None) -> Json:
        return {"outputs": [{"text": text, "stop_reason": reason}]}


FAMILY = Mistral()
