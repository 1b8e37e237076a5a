"""The seed's streaming code-generation handler, complete, streaming from the local model.

Run it:
    sluicegate serve --function codegen=examples/function_url_codegen/app.py:lambda_handler \\
                     --invoke-mode codegen=RESPONSE_STREAM
    curl -N http://127.0.0.1:8000/fn/codegen/ -d '{"prompt": "Write a function that adds."}'

The module-level client needs no endpoint: sluicegate sets AWS_ENDPOINT_URL_BEDROCK_RUNTIME for
its handlers. If the client goes away, the generator is closed (GeneratorExit), which closes the
Bedrock stream, and the model stops generating.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3

bedrock_runtime = boto3.client("bedrock-runtime")


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user_query = json.loads(event.get("body") or "{}").get("prompt", "Write hello world in C.")

    def stream_bedrock() -> Iterator[bytes]:
        response = bedrock_runtime.invoke_model_with_response_stream(
            modelId="anthropic.claude-3-sonnet-20240229-v1:0",
            body=json.dumps(
                {
                    "anthropic_version": "bedrock-2023-05-31",
                    "max_tokens": 2048,
                    "messages": [{"role": "user", "content": user_query}],
                }
            ),
        )
        stream = response["body"]
        try:
            for event in stream:
                chunk = json.loads(event["chunk"]["bytes"])
                if chunk["type"] == "content_block_delta":
                    yield chunk["delta"]["text"].encode("utf-8")
        finally:
            stream.close()  # reached by GeneratorExit too: the model stops on a disconnect

    return {
        "statusCode": 200,
        "headers": {"Content-Type": "text/plain", "Transfer-Encoding": "chunked"},
        "body": stream_bedrock(),
    }
