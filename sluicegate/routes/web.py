"""The code generation page at `/`, its static files, and the model list it picks from."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from sluicegate.gateway import Gateway

# The page renders model output through the DOM only (never innerHTML), and loads nothing from
# elsewhere: a strict policy costs nothing and turns any slip into a blocked request.
POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS = {
    "content-security-policy": POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


async def page(request: Request) -> Response:
    html = resources.files("sluicegate").joinpath("web", "index.html").read_text("utf-8")
    return HTMLResponse(html, headers=HEADERS)


async def models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    settings = gateway.settings
    choices = [{"id": m, "provider": p} for m, p in settings.model_choices()]
    return JSONResponse(
        {"models": choices, "websocket": f"/{settings.websocket.stage}"},
        headers={"cache-control": "no-store"},
    )


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def routes() -> list[Route | Mount]:
    return [
        Route("/", page),
        Route("/sluicegate/models", models),
        Mount("/ui", _Static(packages=[("sluicegate", "web")]), name="ui"),
    ]
