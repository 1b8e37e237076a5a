"""Serving the app with uvicorn: the one place that turns settings into listeners.

The command line and the tests start servers through here, so both enforce the same WebSocket
limits: a message over `max_message_bytes`, or a frame over `max_frame_bytes`, closes the
connection with 1009 (Message Too Big), as API Gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from sluicegate.config import Settings

STARTUP_FAILURE = 3  # uvicorn's exit status when a listener cannot start


def websocket_protocol(max_frame_bytes: int | None) -> type[WebSocketsSansIOProtocol]:
    """uvicorn's websockets (sans-I/O) protocol, with a frame limit besides the message limit."""

    class Limited(WebSocketsSansIOProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # uvicorn passes on only a message limit (ws_max_size); websockets' parser can also
            # hold each frame to a limit, and closes with 1009 past either.
            self.conn.max_fragment_size = max_frame_bytes

    return Limited


def configs(app: Any, settings: Settings, **options: Any) -> list[uvicorn.Config]:
    """The uvicorn configuration of every listener serving `app`."""
    ws = settings.websocket
    return [
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            ws=websocket_protocol(ws.max_frame_bytes),
            ws_max_size=ws.max_message_bytes,
            **options,
        )
    ]


async def serve_together(servers: list[uvicorn.Server]) -> None:
    """Serve every listener in this loop; when one stops (a signal, an error), so do the rest."""
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)


def run_servers(servers: list[uvicorn.Server]) -> None:
    """Run the listeners to the end in a new event loop (uvicorn's choice of loop)."""
    with asyncio.Runner(loop_factory=servers[0].config.get_loop_factory()) as runner:
        runner.run(serve_together(servers))


def run(app: Any, settings: Settings, **options: Any) -> None:
    """Serve until a signal, as `uvicorn.run` does, but with every listener of `settings`."""
    servers = [uvicorn.Server(c) for c in configs(app, settings, **options)]
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the signal it caught
        run_servers(servers)
    if not all(s.started for s in servers):
        sys.exit(STARTUP_FAILURE)
