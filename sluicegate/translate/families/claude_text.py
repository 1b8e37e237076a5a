"""Anthropic Claude Text Completions (`anthropic.claude-v2`, `claude-instant`): `prompt` with
`\\n\\nHuman:` / `\\n\\nAssistant:` turns and `max_tokens_to_sample` in; `completion`, with
`stop_reason` and `stop`, out, in every chunk. These models also take the Messages body, which
is then answered as Messages (`accepts`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluicegate.events import ChatRequest
from sluicegate.translate import anthropic
from sluicegate.translate.families import prompts
from sluicegate.translate.families.base import Answer, Json, TextFamily, text

KEYS = {
    "prompt", "max_tokens_to_sample", "temperature", "top_k", "top_p", "stop_sequences",
    "anthropic_version",
}  # fmt: skip
HUMAN = "\n\nHuman:"  # these models always stop before a new Human turn


STOPS = {"end_turn": "stop_sequence", "stop_sequence": "stop_sequence", "max_tokens": "max_tokens"}


class ClaudeText(TextFamily):
    name = "anthropic-text-completions"
    stops = STOPS

    def accepts(self, body: Mapping[str, Any]) -> bool:
        return "messages" not in body

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        anthropic.check_keys(body, KEYS, set())
        system, turns = prompts.human_assistant(text(body, "prompt"))
        anthropic.require(body, "max_tokens_to_sample")
        stops = anthropic.string_list(body, "stop_sequences")
        return ChatRequest(
            model=model,
            messages=turns,
            system=system,
            max_tokens=anthropic.integer(body, "max_tokens_to_sample", 1),
            temperature=anthropic.number(body, "temperature", 0.0, 1.0),
            top_p=anthropic.number(body, "top_p", 0.0, 1.0),
            top_k=anthropic.optional_integer(body, "top_k", 0),
            stop_sequences=stops if HUMAN in stops else (*stops, HUMAN),
        )

    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        return {"type": "completion", "completion": answer.text, **self._end(answer)}

    def piece(self, text: str, sent: Answer) -> Json:
        return {"type": "completion", "completion": text, "stop_reason": None, "stop": None}

    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        return [{"type": "completion", "completion": "", **self._end(answer)}]

    def _end(self, answer: Answer) -> Json:
        stop = answer.stop_sequence or (HUMAN if answer.stop_reason == "end_turn" else None)
        return {"stop_reason": self.stop(answer), "stop": stop}


FAMILY = ClaudeText()
