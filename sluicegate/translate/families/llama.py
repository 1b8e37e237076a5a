"""Meta Llama (`meta.llama*`): `prompt` (often in Llama's own chat template) and `max_gen_len`
in; `generation`, `prompt_token_count`, `generation_token_count` and `stop_reason` out, in the
whole answer and in every chunk (the prompt's count in the first chunk only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluicegate.events import ChatRequest
from sluicegate.translate import anthropic
from sluicegate.translate.families import prompts
from sluicegate.translate.families.base import Answer, Json, TextFamily, text

KEYS = {"prompt", "temperature", "top_p", "max_gen_len"}
DEFAULT_MAX_TOKENS = 512


STOPS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class Llama(TextFamily):
    name = "meta-llama"
    stops = STOPS

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        anthropic.check_keys(body, KEYS, {"images"})
        system, turns = prompts.conversation(text(body, "prompt"))
        return ChatRequest(
            model=model,
            messages=turns,
            system=system,
            max_tokens=anthropic.integer(body, "max_gen_len", 1, default=DEFAULT_MAX_TOKENS),
            temperature=anthropic.number(body, "temperature", 0.0, 1.0),
            top_p=anthropic.number(body, "top_p", 0.0, 1.0),
        )

    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        u = answer.usage
        return self._chunk(answer.text, u.input_tokens, u.output_tokens, self.stop(answer))

    def piece(self, text: str, sent: Answer) -> Json:
        prompt = sent.usage.input_tokens if sent.pieces == 1 else None
        return self._chunk(text, prompt, sent.pieces, None)

    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        prompt = answer.usage.input_tokens if answer.pieces == 0 else None
        return [self._chunk("", prompt, answer.usage.output_tokens, self.stop(answer))]

    def _chunk(self, text: str, prompt: int | None, generated: int, reason: str | None) -> Json:
        return {
            "generation": text,
            "prompt_token_count": prompt,
            "generation_token_count": generated,
            "stop_reason": reason,
        }


FAMILY = Llama()
