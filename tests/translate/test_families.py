"""The model-family table and the chat templates read back out of raw prompts (pure functions;
the wire shapes are tested through boto3 in tests/e2e/test_bedrock_families.py)."""

from __future__ import annotations

import pytest

from sluicegate.errors import ValidationError
from sluicegate.events import Message
from sluicegate.translate import families
from sluicegate.translate.families import prompts


@pytest.mark.parametrize(
    ("model_id", "base"),
    [
        ("meta.llama3-8b-instruct-v1:0", "meta.llama3-8b-instruct-v1:0"),
        ("us.amazon.nova-lite-v1:0", "amazon.nova-lite-v1:0"),
        ("apac.anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"),
        (
            "global.anthropic.claude-sonnet-4-20250514-v1:0",
            "anthropic.claude-sonnet-4-20250514-v1:0",
        ),
        ("arn:aws:bedrock:eu-west-1:1:inference-profile/eu.mistral.pixtral", "mistral.pixtral"),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/cohere.command-r-v1:0",
            "cohere.command-r-v1:0",
        ),
        ("my-fine-tune", "my-fine-tune"),
    ],
)
def test_the_base_model_inside_profiles_and_arns(model_id: str, base: str) -> None:
    assert families.base_model(model_id) == base


@pytest.mark.parametrize(
    ("model_id", "body", "family"),
    [
        ("anthropic.claude-v2", {"prompt": "x"}, "anthropic-text-completions"),
        ("anthropic.claude-v2", {"messages": []}, "anthropic-messages"),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", {"prompt": "x"}, "anthropic-messages"),
        ("cohere.command-r-plus-v1:0", {}, "cohere-command-r"),
        ("cohere.command-light-text-v14", {}, "cohere-command"),
        ("amazon.titan-tg1-large", {}, "amazon-titan-text"),
        ("amazon.titan-embed-text-v2:0", {}, "anthropic-messages"),  # not a text model
        ("openai.gpt-oss-20b-1:0", {}, "openai-chat-completions"),
    ],
)
def test_the_family_table(model_id: str, body: dict[str, object], family: str) -> None:
    assert families.family_for(model_id, body).name == family


def test_a_llama_3_prompt_is_read_back_into_its_turns() -> None:
    prompt = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert prompts.conversation(prompt) == (
        "Be brief.",
        (Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "And?")),
    )


def test_an_inst_prompt_with_a_system_block_and_two_turns() -> None:
    prompt = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello!</s><s>[INST] And? [/INST]"
    assert prompts.conversation(prompt) == (
        "Be brief.",
        (Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "And?")),
    )


def test_a_prompt_in_no_template_is_one_user_turn() -> None:
    assert prompts.conversation("Say [hi].") == ("", (Message("user", "Say [hi]."),))


def test_claude_text_completion_turns_and_a_prefill() -> None:
    prompt = "You are terse.\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: More\n\nAssistant: Sure,"
    assert prompts.human_assistant(prompt) == (
        "You are terse.",
        (
            Message("user", "Hi"),
            Message("assistant", "Hello"),
            Message("user", "More"),
            Message("assistant", "Sure,"),
        ),
    )


@pytest.mark.parametrize(
    ("prompt", "says"),
    [("Hi", "must start with"), ("\n\nHuman: Hi", "must end with"), ("", "must start with")],
)
def test_claude_text_completion_prompts_in_another_shape_are_refused(
    prompt: str, says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        prompts.human_assistant(prompt)
