"""Bedrock's model families: which body and chunk shapes a model id takes on InvokeModel.

As on Bedrock, the family follows from the model id's provider prefix, after any
inference-profile region prefix (`us.`, `eu.`, `apac.`, `global.` ...) or ARN: `meta.llama3-8b-
instruct-v1:0`, `us.amazon.nova-lite-v1:0` and `arn:aws:bedrock:...:inference-profile/
eu.mistral...` name their families. Ids no family claims take the Anthropic Messages body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluicegate.events import ChatRequest
from sluicegate.translate import anthropic
from sluicegate.translate.families import (
    anthropic_messages,
    claude_text,
    cohere,
    llama,
    mistral,
    nova,
    openai_chat,
    titan,
)
from sluicegate.translate.families.base import Family

REGION_PREFIXES = frozenset({"us", "us-gov", "eu", "apac", "ap", "jp", "au", "ca", "global"})
# First match wins: the longer prefix of one provider goes first.
TABLE: tuple[tuple[tuple[str, ...], Family], ...] = (
    (
        ("anthropic.claude-v1", "anthropic.claude-v2", "anthropic.claude-instant"),
        claude_text.FAMILY,
    ),
    (("amazon.titan-text", "amazon.titan-tg1"), titan.FAMILY),
    (("amazon.nova",), nova.FAMILY),
    (("meta.llama",), llama.FAMILY),
    (("mistral.",), mistral.FAMILY),
    (("cohere.command-r",), cohere.COMMAND_R),
    (("cohere.command",), cohere.COMMAND),
    (("openai.",), openai_chat.FAMILY),
)
DEFAULT: Family = anthropic_messages.FAMILY


def base_model(model_id: str) -> str:
    """The foundation model id inside an ARN or an inference profile id."""
    name = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    head, dot, rest = name.partition(".")
    return rest if dot and head in REGION_PREFIXES else name


def family_for(model_id: str, body: Mapping[str, Any]) -> Family:
    base = base_model(model_id)
    for prefixes, family in TABLE:
        if base.startswith(prefixes) and family.accepts(body):
            return family
    return DEFAULT


@dataclass(frozen=True, slots=True)
class Invocation:
    """An InvokeModel body read by its family."""

    family: Family
    chat: ChatRequest


def parse(model_id: str, raw: bytes) -> Invocation:
    """Read an InvokeModel body as the model id's family reads it (ValidationError if not)."""
    body = anthropic.json_object(raw)
    family = family_for(model_id, body)
    return Invocation(family, family.parse(model_id, body))
