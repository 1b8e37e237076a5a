"""Conversations out of raw prompts written in a model's own chat template.

Published code formats prompts for the model it calls: Llama 3's header tokens, `[INST]` for
Llama 2 and Mistral, `\\n\\nHuman:` turns for Claude's text completions. The model served here
has its own template, so the turns are read back out and given to it as a conversation; a prompt
in no known template is one user turn.
"""

from __future__ import annotations

import re

from sluicegate.errors import ValidationError
from sluicegate.events import Message
from sluicegate.translate.openai_fields import merge_turns

Conversation = tuple[str, tuple[Message, ...]]  # the system text, the turns

LLAMA3_TURN = re.compile(
    r"<\|start_header_id\|>(system|user|assistant|ipython)<\|end_header_id\|>\s*(.*?)"
    r"(?=<\|eot_id\|>|<\|start_header_id\|>|$)",
    re.S,
)
INST = re.compile(r"\[INST\](.*?)\[/INST\](.*?)(?=(?:<s>)?\s*\[INST\]|$)", re.S)
SYS = re.compile(r"<<SYS>>(.*?)<</SYS>>", re.S)
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def conversation(prompt: str) -> Conversation:
    """The turns of a Llama 3 or `[INST]` prompt; otherwise the prompt as one user turn."""
    if "<|start_header_id|>" in prompt:
        return _llama3(prompt)
    if "[INST]" in prompt and "[/INST]" in prompt:
        return _inst(prompt)
    return "", (Message("user", prompt),)


def _llama3(prompt: str) -> Conversation:
    system: list[str] = []
    turns: list[Message] = []
    for role, body in LLAMA3_TURN.findall(prompt):
        if role == "system":
            system.append(body.strip())
        elif body.strip():
            turns.append(Message("assistant" if role == "assistant" else "user", body.strip()))
    return _checked("\n\n".join(system), turns)


def _inst(prompt: str) -> Conversation:
    system: list[str] = []
    turns: list[Message] = []
    for asked, answered in INST.findall(prompt):
        found = SYS.search(asked)
        if found:
            system.append(found.group(1).strip())
            asked = SYS.sub("", asked)
        turns.append(Message("user", asked.strip()))
        reply = answered.replace("</s>", "").strip()
        if reply:
            turns.append(Message("assistant", reply))
    return _checked("\n\n".join(system), turns)


def _checked(system: str, turns: list[Message]) -> Conversation:
    merged = merge_turns(turns)
    if not merged or merged[0].role != "user":
        raise ValidationError("The prompt has no user turn before its first assistant turn.")
    return system, merged


def human_assistant(prompt: str) -> Conversation:
    """Claude's text-completion prompt: an optional system text, then `\\n\\nHuman:` and
    `\\n\\nAssistant:` turns, ending with an Assistant turn (what follows it, if anything, is
    the start of the answer)."""
    head, found, rest = prompt.partition(HUMAN)
    if not found:
        raise ValidationError(
            'Invalid prompt: prompt must start with "\\n\\nHuman:" turn after an optional '
            "system prompt"
        )
    parts = re.split(r"(\n\nHuman:|\n\nAssistant:)", HUMAN + rest)[1:]
    turns = [
        Message("user" if marker == HUMAN else "assistant", body.strip())
        for marker, body in zip(parts[::2], parts[1::2], strict=True)
    ]
    if turns[-1].role != "assistant":
        raise ValidationError('Invalid prompt: prompt must end with "\\n\\nAssistant:" turn')
    if not turns[-1].text:
        turns.pop()
    return head.strip(), merge_turns(turns)
