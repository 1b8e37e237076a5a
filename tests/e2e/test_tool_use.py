"""Tool use through every door that has it, with the stock clients and agent frameworks: a
Strands agent's two-tool loop, langchain-aws `bind_tools`, botocore's and the Anthropic SDK's
reassembly of a streamed call (the same as the call not streamed), the openai SDK's tool_calls.

Model ids starting with `scripted` go to the scripted provider, whose calls follow
`sluicegate:tool=` directives exactly; the others go to the embedded model, whose calls the
grammar holds to the tool's schema.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import jsonschema
import openai
import pytest

from tests.conftest import Server

EMBEDDED = "anthropic.claude-3-5-sonnet-20240620-v1:0"
SCRIPTED = "scripted-tools"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
QUESTION = "What is the weather in Paris, in celsius?"
CONVERSE_TOOLS = {
    "tools": [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Current weather in a city.",
                "inputSchema": {"json": WEATHER_SCHEMA},
            }
        }
    ]
}
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Current weather in a city.",
     "input_schema": WEATHER_SCHEMA},
]  # fmt: skip


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The frameworks make their own boto3 clients, from the environment's credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


# -- Strands -------------------------------------------------------------------------------------


def test_a_strands_agent_runs_a_two_tool_loop_to_a_final_answer(server: Server) -> None:
    from strands import Agent, tool
    from strands.models import BedrockModel

    calls: list[str] = []

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first.
            b: The second.
        """
        calls.append(f"add {a} {b}")
        return a + b

    @tool
    def shout(text: str) -> str:
        """Write a text in capitals.

        Args:
            text: What to shout.
        """
        calls.append(f"shout {text}")
        return text.upper()

    model = BedrockModel(model_id=SCRIPTED, endpoint_url=server.url, region_name="us-east-1")
    agent = Agent(model=model, tools=[add, shout], callback_handler=None)
    result = agent('sluicegate:tool=add{"a": 2, "b": 3} sluicegate:tool=shout{"text": "done"}')
    assert calls == ["add 2 3", "shout done"]
    assert result.stop_reason == "end_turn"
    assert str(result).startswith("Tool results: DONE")
    uses = [b["toolUse"] for m in agent.messages for b in m["content"] if "toolUse" in b]
    results = [b["toolResult"] for m in agent.messages for b in m["content"] if "toolResult" in b]
    assert [u["name"] for u in uses] == ["add", "shout"]
    assert [r["toolUseId"] for r in results] == [u["toolUseId"] for u in uses]
    assert [r["status"] for r in results] == ["success", "success"]


# -- langchain-aws -------------------------------------------------------------------------------


def test_langchain_bind_tools_invoke_returns_a_parsed_call(server: Server) -> None:
    from langchain_aws import ChatBedrockConverse
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str, unit: str) -> str:
        """Current weather in a city, in celsius or fahrenheit."""
        return "sunny"

    llm = ChatBedrockConverse(
        model=EMBEDDED, endpoint_url=server.url, region_name="us-east-1", max_tokens=100,
        temperature=0,
    )  # fmt: skip
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(QUESTION)
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    assert isinstance(call["args"]["city"], str) and isinstance(call["args"]["unit"], str)
    assert message.response_metadata["stopReason"] == "tool_use"


# -- botocore: Converse and ConverseStream --------------------------------------------------------


def converse_both(server: Server, model: str, text: str, **extra: Any) -> tuple[Any, Any, Any]:
    """(the whole answer, the streamed one put together as botocore gives it, its stop)."""
    client = server.bedrock()
    messages = [{"role": "user", "content": [{"text": text}]}]
    args = {"modelId": model, "messages": messages, "inferenceConfig": {"maxTokens": 100,
            "temperature": 0.0}, **extra}  # fmt: skip
    whole = client.converse(**args)
    uses, stop, indexes = {}, None, set()
    for event in client.converse_stream(**args)["stream"]:
        for kind in ("contentBlockStart", "contentBlockDelta", "contentBlockStop"):
            if kind in event:
                indexes.add(event[kind]["contentBlockIndex"])
        if "toolUse" in event.get("contentBlockStart", {}).get("start", {}):
            start = event["contentBlockStart"]
            uses[start["contentBlockIndex"]] = {**start["start"]["toolUse"], "input": ""}
        if "toolUse" in event.get("contentBlockDelta", {}).get("delta", {}):
            delta = event["contentBlockDelta"]
            uses[delta["contentBlockIndex"]]["input"] += delta["delta"]["toolUse"]["input"]
        stop = event.get("messageStop", {}).get("stopReason", stop)
    assert indexes  # every start, delta and stop said its block
    streamed = [{**u, "input": json.loads(u["input"])} for u in uses.values()]
    return whole, streamed, stop


def test_a_converse_stream_call_put_together_equals_the_converse_one(server: Server) -> None:
    config = {**CONVERSE_TOOLS, "toolChoice": {"any": {}}}
    whole, streamed, stop = converse_both(
        server, SCRIPTED, "sluicegate:tool=get_weather", toolConfig=config
    )
    calls = [b["toolUse"] for b in whole["output"]["message"]["content"] if "toolUse" in b]
    assert calls == streamed and stop == whole["stopReason"] == "tool_use"
    assert calls[0]["toolUseId"].startswith("toolu_")
    # The embedded model, greedy: the same call either way (its ids are its own each time).
    config = {**CONVERSE_TOOLS, "toolChoice": {"tool": {"name": "get_weather"}}}
    whole, streamed, stop = converse_both(server, EMBEDDED, QUESTION, toolConfig=config)
    [call] = [b["toolUse"] for b in whole["output"]["message"]["content"] if "toolUse" in b]
    jsonschema.validate(call["input"], WEATHER_SCHEMA)
    assert [(c["name"], c["input"]) for c in streamed] == [(call["name"], call["input"])]
    assert stop == "tool_use"


def test_a_tool_result_turn_is_answered(server: Server) -> None:
    client = server.bedrock()
    ask = {"role": "user", "content": [{"text": "sluicegate:tool=get_weather"}]}
    first = client.converse(modelId=SCRIPTED, messages=[ask], toolConfig=CONVERSE_TOOLS)
    use = first["output"]["message"]["content"][0]["toolUse"]
    result = {"toolResult": {"toolUseId": use["toolUseId"], "status": "error",
              "content": [{"json": {"error": "no such city"}}, {"text": "try again"}]}}  # fmt: skip
    turns = [ask, first["output"]["message"], {"role": "user", "content": [result]}]
    answer = client.converse(modelId=SCRIPTED, messages=turns, toolConfig=CONVERSE_TOOLS)
    text = answer["output"]["message"]["content"][0]["text"]
    assert text.startswith('Tool results: {"error": "no such city"}try again')
    assert answer["stopReason"] == "end_turn"


# -- Anthropic: the Messages API and Bedrock InvokeModel -------------------------------------------


def anthropic_clients(server: Server) -> list[Any]:
    bedrock = anthropic.AnthropicBedrock(
        aws_region="us-east-1", aws_access_key="AKIDEXAMPLE", aws_secret_key="secret",
        base_url=server.url, max_retries=0, http_client=httpx2.Client(timeout=120),
    )  # fmt: skip
    return [anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0), bedrock]


@pytest.mark.parametrize("door", ["messages", "bedrock"])
def test_an_anthropic_sdk_stream_put_together_equals_the_whole_message(
    server: Server, door: str
) -> None:
    client = anthropic_clients(server)[door == "bedrock"]
    args: dict[str, Any] = {
        "model": SCRIPTED, "max_tokens": 100, "tools": ANTHROPIC_TOOLS,
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": 'sluicegate:tool=get_weather{"city": "Paris"}'}],
    }  # fmt: skip
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert whole.stop_reason == final.stop_reason == "tool_use"
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]
    [use] = whole.content
    assert use.type == "tool_use" and use.input == {"city": "Paris"}
    assert use.id.startswith("toolu_")
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert deltas and all(d.delta.type == "input_json_delta" for d in deltas)
    # The embedded model, greedy: the same call streamed and not.
    args |= {"model": EMBEDDED, "extra_body": {"temperature": 0.0}}
    args["messages"] = [{"role": "user", "content": QUESTION}]
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        final = stream.get_final_message()
    [use] = whole.content
    jsonschema.validate(use.input, WEATHER_SCHEMA)
    assert [(b.name, b.input) for b in final.content] == [(use.name, use.input)]


def test_anthropic_tool_result_turns_are_fed_back(server: Server) -> None:
    client = anthropic_clients(server)[0]
    ask = {"role": "user", "content": "sluicegate:tool=get_weather"}
    first = client.messages.create(model=SCRIPTED, max_tokens=50, tools=ANTHROPIC_TOOLS,
                                   messages=[ask])  # fmt: skip
    [use] = first.content
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}
    turns = [ask, {"role": "assistant", "content": [use.model_dump()]},
             {"role": "user", "content": [result]}]  # fmt: skip
    answer = client.messages.create(model=SCRIPTED, max_tokens=50, tools=ANTHROPIC_TOOLS,
                                    messages=turns)  # fmt: skip
    assert answer.content[0].type == "text"
    assert answer.content[0].text.startswith("Tool results: 18 degrees")


# -- OpenAI Chat Completions -------------------------------------------------------------------

FUNCTIONS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather.",
                                      "parameters": WEATHER_SCHEMA}},
]  # fmt: skip


def test_the_openai_sdk_gets_tool_calls_streamed_and_not(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
    args: dict[str, Any] = {
        "model": SCRIPTED, "tools": FUNCTIONS, "tool_choice": "required",
        "messages": [{"role": "user", "content": "sluicegate:tool=get_weather"}],
    }  # fmt: skip
    whole = client.chat.completions.create(**args)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "example", "unit": "celsius"}
    with client.chat.completions.stream(**args) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    [streamed] = final.choices[0].message.tool_calls or []
    assert (streamed.id, streamed.function.name) == (call.id, call.function.name)
    assert json.loads(streamed.function.arguments) == json.loads(call.function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"
    # The tool's answer goes back as a `tool` message.
    turns = [*args["messages"], choice.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}]  # fmt: skip
    answer = client.chat.completions.create(model=SCRIPTED, tools=FUNCTIONS, messages=turns)
    assert (answer.choices[0].message.content or "").startswith("Tool results: 18 degrees")
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_the_openai_sdk_gets_schema_valid_calls_from_the_embedded_model(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
    for seed in range(3):
        whole = client.chat.completions.create(
            model=EMBEDDED, tools=FUNCTIONS, seed=seed, max_tokens=60,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            messages=[{"role": "user", "content": QUESTION}],
        )  # fmt: skip
        [call] = whole.choices[0].message.tool_calls or []
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)


def test_the_openai_sdk_gets_function_call_items_from_responses(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
    tools = [{"type": "function", "name": "get_weather", "description": "Current weather.",
              "parameters": WEATHER_SCHEMA}]  # fmt: skip
    ask = {"role": "user", "content": 'sluicegate:tool=get_weather{"city": "Oslo"}'}
    whole = client.responses.create(model=SCRIPTED, tools=tools, input=[ask])
    [call] = [item for item in whole.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    with client.responses.stream(model=SCRIPTED, tools=tools, input=[ask]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    [streamed] = [item for item in final.output if item.type == "function_call"]
    assert (streamed.call_id, streamed.arguments) == (call.call_id, call.arguments)
    assert "response.function_call_arguments.delta" in kinds
    made = {"type": "function_call", "call_id": call.call_id, "name": call.name,
            "arguments": call.arguments}  # fmt: skip
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "-3 C"}
    followed = [ask, made, output]
    answer = client.responses.create(model=SCRIPTED, tools=tools, input=followed)
    assert answer.output_text.startswith("Tool results: -3 C")


def test_a_strands_agent_on_the_embedded_model_calls_its_tool_and_answers(
    server: Server,
) -> None:
    from strands import Agent, tool
    from strands.models import BedrockModel

    asked: list[tuple[str, str]] = []

    @tool
    def get_weather(city: str, unit: str) -> str:
        """Current weather in a city.

        Args:
            city: The city.
            unit: celsius or fahrenheit.
        """
        asked.append((city, unit))
        return f"18 degrees {unit}, clear sky"

    model = BedrockModel(
        model_id=EMBEDDED, endpoint_url=server.url, region_name="us-east-1", temperature=0.0,
        max_tokens=80,
    )  # fmt: skip
    agent = Agent(model=model, tools=[get_weather], callback_handler=None)
    result = agent(QUESTION)
    assert asked and all(isinstance(city, str) for city, _ in asked)
    assert result.stop_reason in ("end_turn", "max_tokens") and str(result).strip()
