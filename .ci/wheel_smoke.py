"""Run by .ci/wheel-smoke with the fresh venv's python: serve, wait for /readyz, stream once
with a SigV4-signed boto3 call, stop. Only the package's runtime dependencies are installed."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3
from botocore.config import Config

assert importlib.util.find_spec("pytest") is None, "the test extra leaked into a plain install"

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
base = f"http://127.0.0.1:{port}"
log = tempfile.TemporaryFile("w+")
cwd = tempfile.mkdtemp()  # not the checkout: the installed package must stand on its own
server = subprocess.Popen(
    [sys.argv[1], "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=cwd
)
try:
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            sys.exit(f"wheel-smoke: the server did not get ready:\n{log.read()[-2000:]}")
        try:
            urllib.request.urlopen(base + "/readyz", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=base,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1}),
    )
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    response = client.invoke_model_with_response_stream(
        modelId="anthropic.claude-3-haiku-20240307-v1:0", body=json.dumps(body)
    )
    types = [json.loads(e["chunk"]["bytes"])["type"] for e in response["body"]]
    deltas = types.count("content_block_delta")
    if deltas < 1 or types[-1] != "message_stop":
        sys.exit(f"wheel-smoke: unexpected stream {types}")
finally:
    server.send_signal(signal.SIGTERM)
    code = server.wait(30)
os.rmdir(cwd)
if code not in (0, -signal.SIGTERM):
    sys.exit(f"wheel-smoke: the server exited with {code}")
print(f"wheel-smoke: the installed sluicegate streamed {deltas} deltas and stopped ({code})")
