"""A chat room in the style of API Gateway's simple WebSocket chat sample, in Python.

Run it:
    sluicegate serve --ws-route '$connect=examples/websocket_chat/chat.py:on_connect' \\
                     --ws-route '$disconnect=examples/websocket_chat/chat.py:on_disconnect' \\
                     --ws-route 'sendmessage=examples/websocket_chat/chat.py:send_message'
then connect several clients to ws://127.0.0.1:8000/ws?name=ann and send
    {"action": "sendmessage", "data": "hello"}

The handlers are plain Lambda handlers. They reach clients through the stock boto3
`apigatewaymanagementapi` client, whose endpoint sluicegate provides in
AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI (the AWS sample keeps connection ids in DynamoDB; a
set in this module plays that table here, since handlers run in the server's process).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import boto3

connections: set[str] = set()
names: dict[str, str] = {}
lock = threading.Lock()
api = boto3.client("apigatewaymanagementapi")


def on_connect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    name = (event.get("queryStringParameters") or {}).get("name")
    if not name:
        return {"statusCode": 400, "body": "Say who you are: ?name=..."}
    connection_id = event["requestContext"]["connectionId"]
    with lock:
        connections.add(connection_id)
        names[connection_id] = name
    return {"statusCode": 200, "body": "Connected."}


def on_disconnect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    connection_id = event["requestContext"]["connectionId"]
    with lock:
        connections.discard(connection_id)
        names.pop(connection_id, None)
    return {"statusCode": 200, "body": "Disconnected."}


def send_message(event: dict[str, Any], context: Any) -> dict[str, Any]:
    sender = event["requestContext"]["connectionId"]
    data = json.loads(event["body"]).get("data", "")
    message = json.dumps({"from": names.get(sender, "?"), "data": data}).encode()
    with lock:
        targets = list(connections)
    for connection_id in targets:
        try:
            api.post_to_connection(ConnectionId=connection_id, Data=message)
        except api.exceptions.GoneException:
            with lock:
                connections.discard(connection_id)
    return {"statusCode": 200, "body": "Data sent."}
