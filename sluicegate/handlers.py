"""Lambda-style user handlers: `handler(event, context)` loaded from `path/to/file.py:name`.

Handlers run in this process, sync ones in a worker thread, async ones on the loop, each with a
Lambda-like context and a deadline. They reach sluicegate itself with unmodified boto3 code:
`handler_environment` points AWS_ENDPOINT_URL_* at this server and sets the region. Every
function shares the process's environment, so AWS_LAMBDA_FUNCTION_NAME is the one variable that
differs by function: `function_scope` makes os.environ show each its own name, at import and
while it runs (in its threads too).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import inspect
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluicegate import errors

Handler = Callable[[dict[str, Any], Any], Any]


class HandlerLoadError(Exception):
    """A handler module that cannot be imported: says which file and line."""


def load_handler(spec: str, function_name: str | None = None) -> Handler:
    """Import `file.py:function` (the file's folder goes on sys.path, as Lambda's task root),
    as the function `function_name` if it is one (its module-level code sees its name)."""
    path_text, sep, name = spec.rpartition(":")
    path = Path(path_text)
    if not sep or not name or path.suffix != ".py":
        raise HandlerLoadError(f"{spec!r}: expected path/to/file.py:function")
    if not path.is_file():
        raise HandlerLoadError(f"{spec!r}: no file {path}")
    with function_scope(function_name):
        module = _import(path.resolve())
    handler = getattr(module, name, None)
    if not callable(handler):
        raise HandlerLoadError(f"{spec!r}: {path} has no function {name!r}")
    return handler  # type: ignore[no-any-return]


def _import(path: Path) -> Any:
    """Import a handler file once, however many routes name it (they share its state)."""
    module_name = f"sluicegate_handler_{path.stem}_{abs(hash(path)) % 10**8}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise HandlerLoadError(f"{exc.filename}:{exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{frame.filename}:{frame.lineno}"
        raise HandlerLoadError(f"{where}: {type(exc).__name__}: {exc}") from exc
    sys.modules[module_name] = module
    return module


@dataclass
class LambdaContext:
    """The attributes and method handlers use on Lambda's context object."""

    function_name: str
    timeout_seconds: float
    memory_limit_in_mb: int = 128
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    started: float = field(default_factory=time.monotonic)
    region: str = field(default_factory=lambda: os.environ.get("AWS_REGION", "us-east-1"))

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:000000000000:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return time.strftime("%Y/%m/%d/[$LATEST]") + self.aws_request_id.replace("-", "")

    def get_remaining_time_in_millis(self) -> int:
        left = self.timeout_seconds - (time.monotonic() - self.started)
        return max(0, int(left * 1000))


async def call(handler: Handler, event: dict[str, Any], context: LambdaContext) -> Any:
    """Run a handler to completion within its timeout (errors.ModelTimeout past it). A
    generator function's generator comes back unstarted: its body runs as it is read."""
    with function_scope(context.function_name):
        if inspect.iscoroutinefunction(handler):
            work: Any = handler(event, context)
        else:
            work = asyncio.to_thread(handler, event, context)  # the scope goes with the thread
        try:
            return await asyncio.wait_for(work, context.timeout_seconds)
        except TimeoutError:
            raise errors.ModelTimeout(
                f"Task timed out after {context.timeout_seconds:.2f} seconds"
            ) from None


# -- AWS_LAMBDA_FUNCTION_NAME, per function ---------------------------------------------------

FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"
_function: contextvars.ContextVar[str | None] = contextvars.ContextVar("function", default=None)


class _FunctionEnviron(os._Environ[str]):
    """os.environ, except that AWS_LAMBDA_FUNCTION_NAME is the running function's name."""

    def __getitem__(self, key: str) -> str:
        name = _function.get() if key == FUNCTION_NAME else None
        return super().__getitem__(key) if name is None else name


@contextlib.contextmanager
def function_scope(name: str | None) -> Iterator[None]:
    """Code run here (and tasks and to_thread workers it starts) sees AWS_LAMBDA_FUNCTION_NAME
    as `name`; None changes nothing."""
    if name is None:
        yield
        return
    if type(os.environ) is os._Environ:
        os.environ.__class__ = _FunctionEnviron  # every reference to os.environ sees it
    os.environ.setdefault(FUNCTION_NAME, name)  # listed, for code that iterates the environment
    token = _function.set(name)
    try:
        yield
    finally:
        _function.reset(token)


# Handlers' secret access key when no api_key is set: known to all, so it proves nothing.
PLACEHOLDER_SECRET = "sluicegate"


def handler_environment(
    base_url: str, stage: str, secret: str | None = None, region: str = "us-east-1"
) -> dict[str, str]:
    """What handlers' boto3 clients need to talk to this server, and what Lambda always sets,
    unless already set; `secret` (the configured api_key) signs their @connections calls so
    that the server can verify them."""
    wanted = {
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": base_url,
        "AWS_ENDPOINT_URL_LAMBDA": base_url,
        "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": f"{base_url}/{stage}",
        "AWS_ACCESS_KEY_ID": "sluicegate",
        "AWS_SECRET_ACCESS_KEY": secret or PLACEHOLDER_SECRET,
        **region_environment(region),
    }
    return _ours(wanted)


def region_environment(region: str) -> dict[str, str]:
    """The region variables Lambda always sets (code reads AWS_REGION at import), also for
    handlers that call real AWS; a region set outside sluicegate stays."""
    return _ours({"AWS_REGION": region, "AWS_DEFAULT_REGION": region})


def user_ca_bundle() -> str | None:
    """The AWS_CA_BUNDLE set outside sluicegate, if any (also once we have replaced it)."""
    current = os.environ.get("AWS_CA_BUNDLE")
    if current is None or current != _SET.get("AWS_CA_BUNDLE"):
        _BEFORE["AWS_CA_BUNDLE"] = current
    return _BEFORE.get("AWS_CA_BUNDLE")


def ca_environment(ca_bundle: str) -> dict[str, str]:
    """AWS_CA_BUNDLE for handlers whose clients reach this server's TLS listener (the endpoint
    `https://{domainName}/{stage}`). It replaces the user's, so `ca_bundle` must include what
    that trusted (`user_ca_bundle()`): a corporate proxy's authority, say."""
    _SET["AWS_CA_BUNDLE"] = ca_bundle
    return {"AWS_CA_BUNDLE": ca_bundle}


def _ours(wanted: dict[str, str]) -> dict[str, str]:
    # Values we set earlier (another server in this process) are ours to replace; the user's not.
    chosen = {k: v for k, v in wanted.items() if os.environ.get(k, _SET.get(k)) == _SET.get(k)}
    _SET.update(chosen)
    return chosen


_SET: dict[str, str] = {}
_BEFORE: dict[str, str | None] = {}
