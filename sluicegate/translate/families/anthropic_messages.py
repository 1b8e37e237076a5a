"""Anthropic Messages, the body every other model id gets (today's behaviour): the shapes live
in translate/anthropic.py, shared with the Messages API door."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sluicegate.events import ChatRequest, Event
from sluicegate.translate import anthropic
from sluicegate.translate.families.base import Chunks, Json


class AnthropicMessages:
    name = "anthropic-messages"

    def accepts(self, body: Mapping[str, Any]) -> bool:
        return True

    def parse(self, model: str, body: Mapping[str, Any]) -> ChatRequest:
        return anthropic.parse_object(model, body)

    def whole(self, chat: ChatRequest, events: Sequence[Event]) -> Json:
        return anthropic.message_json(events)

    def chunks(self, chat: ChatRequest) -> Chunks:
        return MessagesChunks()


class MessagesChunks:
    """One chunk per Anthropic stream event."""

    def feed(self, event: Event) -> list[Json]:
        data = anthropic.event_json(event)
        return [] if data is None else [data]


FAMILY = AnthropicMessages()
