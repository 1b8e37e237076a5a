"""Cohere on Bedrock, in its two shapes.

Command (`cohere.command-text-*`, `command-light-*`): `prompt` in; `generations[].text` out,
streamed as `{"text", "is_finished": false}` chunks, then `{"is_finished": true,
"finish_reason", ...}`. Command R (`cohere.command-r*`): `message`, `chat_history` and
`preamble` in; `text` and `finish_reason` out, streamed as Cohere's chat events (`stream-start`,
`text-generation` ..., `stream-end`). Both say COMPLETE or MAX_TOKENS.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sluicegate.errors import ValidationError
from sluicegate.events import ChatRequest, Message, Role
from sluicegate.translate import anthropic
from sluicegate.translate.families.base import Answer, Json, TextFamily, kind, text
from sluicegate.translate.openai_fields import merge_turns

FINISH = {"end_turn": "COMPLETE", "stop_sequence": "COMPLETE", "max_tokens": "MAX_TOKENS"}

COMMAND_KEYS = {
    "prompt", "temperature", "p", "k", "max_tokens", "stop_sequences", "return_likelihoods",
    "stream", "num_generations", "logit_bias", "truncate",
}  # fmt: skip
COMMAND_DEFAULT_MAX_TOKENS = 20  # Cohere Command's own default

R_KEYS = {
    "message", "chat_history", "preamble", "max_tokens", "temperature", "p", "k",
    "prompt_truncation", "frequency_penalty", "presence_penalty", "seed", "return_prompt",
    "stop_sequences", "raw_prompting", "search_queries_only",
}  # fmt: skip
R_UNSUPPORTED = {"documents", "tools", "tool_results"}
R_DEFAULT_MAX_TOKENS = 512
# Cohere's SYSTEM turns are instructions in the conversation: kept as user text.
ROLES: dict[str, Role] = {"USER": "user", "CHATBOT": "assistant", "SYSTEM": "user"}
COHERE_ROLE = {"user": "USER", "assistant": "CHATBOT"}


def _sampling(body: Mapping[str, Any], temperature_max: float) -> dict[str, Any]:
    return {
        "temperature": anthropic.number(body, "temperature", 0.0, temperature_max),
        "top_p": anthropic.number(body, "p", 0.0, 1.0),
        "top_k": anthropic.optional_integer(body, "k", 0),
        "stop_sequences": anthropic.string_list(body, "stop_sequences"),
    }


class Command(TextFamily):
    name = "cohere-command"
    stops = FINISH

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        anthropic.check_keys(body, COMMAND_KEYS, set())
        prompt = text(body, "prompt")
        if body.get("num_generations", 1) != 1:
            raise ValidationError("#/num_generations: sluicegate answers 1 generation; send 1.")
        if body.get("return_likelihoods", "NONE") != "NONE":
            raise ValidationError("[return_likelihoods] is not supported by sluicegate yet.")
        if body.get("logit_bias"):
            raise ValidationError("[logit_bias] is not supported by sluicegate yet: remove it.")
        return ChatRequest(
            model=model,
            messages=(Message("user", prompt),),
            max_tokens=anthropic.integer(body, "max_tokens", 1, default=COMMAND_DEFAULT_MAX_TOKENS),
            **_sampling(body, 5.0),
        )

    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        generation = {
            "id": str(uuid.uuid4()),
            "text": answer.text,
            "finish_reason": self.stop(answer),
        }
        return {"id": answer.id, "generations": [generation], "prompt": _prompt(chat)}

    def piece(self, text: str, sent: Answer) -> Json:
        return {"text": text, "is_finished": False}

    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        reason = self.stop(answer)
        whole = self.answer(chat, answer)
        return [{"is_finished": True, "finish_reason": reason, "response": whole}]


class CommandR(TextFamily):
    name = "cohere-command-r"
    stops = FINISH

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        anthropic.check_keys(body, R_KEYS, R_UNSUPPORTED)
        message = text(body, "message")
        preamble = body.get("preamble", "")
        if not isinstance(preamble, str):
            raise anthropic.malformed(f"#/preamble: expected type: String, found: {kind(preamble)}")
        turns = [*_history(body.get("chat_history")), Message("user", message)]
        return ChatRequest(
            model=model,
            messages=merge_turns(turns),
            system=preamble,
            max_tokens=anthropic.integer(body, "max_tokens", 1, default=R_DEFAULT_MAX_TOKENS),
            seed=anthropic.optional_integer(body, "seed", 0),
            **_sampling(body, 1.0),
        )

    def answer(self, chat: ChatRequest, answer: Answer) -> Json:
        turns = [*chat.messages, Message("assistant", answer.text)]
        history = [{"role": COHERE_ROLE[m.role], "message": m.text} for m in turns]
        return {
            "response_id": str(uuid.uuid4()),
            "text": answer.text,
            "generation_id": answer.id,
            "chat_history": history,
            "finish_reason": self.stop(answer),
        }

    def opening(self, answer: Answer) -> list[Json]:
        return [{"is_finished": False, "event_type": "stream-start", "generation_id": answer.id}]

    def piece(self, text: str, sent: Answer) -> Json:
        return {"is_finished": False, "event_type": "text-generation", "text": text}

    def closing(self, chat: ChatRequest, answer: Answer) -> list[Json]:
        return [
            {
                "is_finished": True,
                "event_type": "stream-end",
                "response": self.answer(chat, answer),
                "finish_reason": self.stop(answer),
            }
        ]


def _history(value: Any) -> list[Message]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise anthropic.malformed(f"#/chat_history: expected type: JSONArray, found: {kind(value)}")
    out: list[Message] = []
    for i, turn in enumerate(value):
        where = f"#/chat_history/{i}"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ROLES:
            raise anthropic.malformed(f"{where}/role: expected one of USER, CHATBOT, SYSTEM")
        out.append(Message(ROLES[role], text(turn, "message", where)))
    return out


def _prompt(chat: ChatRequest) -> str:
    return chat.messages[-1].text if chat.messages else ""


COMMAND = Command()
COMMAND_R = CommandR()
