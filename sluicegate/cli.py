"""The command line: `sluicegate serve`, `models`, `chat` (chat.py) and `bench` (bench.py)."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pydantic
import typer
from rich.console import Console
from rich.markup import escape

from sluicegate import accesslog, config, telemetry
from sluicegate.config import FunctionSettings, ProviderName, Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.base import Provider

if TYPE_CHECKING:
    from sluicegate.tls import LocalCertificate

app = typer.Typer(
    help="sluicegate: a streaming gateway for foundation models, speaking AWS wire protocols.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
ENGINE_FAILED = 4  # exit status when the embedded engine cannot start

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (see sluicegate/config.py)."),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="A GGUF file for the local provider [default: the embedded SmolLM2-135M-Instruct].",
    ),
]
RouteOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--route",
        help="GLOB=PROVIDER: serve model ids matching GLOB with PROVIDER (local, scripted, or "
        "an upstream named under [providers] in --config). "
        "Repeatable, first match wins; replaces the default '*=local'.",
    ),
]


WsRouteOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ws-route",
        help="KEY=FILE.py:FUNCTION: a Lambda-style handler for a WebSocket route key "
        "($connect, $disconnect, $default or an action). Repeatable.",
    ),
]


def apply_flags(
    settings: Settings,
    model: Path | None,
    routes: list[str] | None,
    ws_routes: list[str] | None = None,
) -> Settings:
    updates: dict[str, object] = {}
    if ws_routes:
        ws = settings.websocket
        added = dict(parse_pair(r, "--ws-route") for r in ws_routes)
        updates["websocket"] = ws.model_copy(update={"routes": {**ws.routes, **added}})
    if model is not None:
        if not model.is_file():
            raise typer.BadParameter(f"{model} is not a file", param_hint="--model")
        updates["model"] = model
    if routes:
        updates["routes"] = [parse_route(r, settings) for r in routes]
    return settings.model_copy(update=updates)


def apply_functions(
    settings: Settings,
    specs: list[str] | None,
    modes: list[str] | None,
    timeouts: list[str] | None,
) -> Settings:
    fns = dict(settings.functions)
    for name, handler in (parse_pair(t, "--function") for t in specs or []):
        fns[name] = FunctionSettings(handler=handler)
    for flag, key, items in (
        ("--invoke-mode", "invoke_mode", modes),
        ("--timeout", "timeout_seconds", timeouts),
    ):
        for name, value in (parse_pair(t, flag) for t in items or []):
            if name not in fns:
                raise typer.BadParameter(
                    f"no function {name!r} (give --function first)", param_hint=flag
                )
            fns[name] = FunctionSettings.model_validate({**fns[name].model_dump(), key: value})
    return settings.model_copy(update={"functions": fns})


def parse_pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise typer.BadParameter(f"{text!r}: expected KEY=VALUE", param_hint=flag)
    return key, value


def parse_route(text: str, settings: Settings) -> Route:
    glob, sep, provider = text.rpartition("=")
    known = [*config.BUILT_IN, *settings.providers]
    if not sep or provider not in known:
        raise typer.BadParameter(
            f"{text!r}: expected GLOB=PROVIDER, PROVIDER one of {', '.join(known)} "
            "(GLOB=local or GLOB=scripted, or a name under [providers] in --config)",
            param_hint="--route",
        )
    return Route.model_validate({"match": glob, "provider": provider})


def load_settings(path: Path | None) -> Settings:
    """The config file's settings; a bad one is refused at start-up, naming the keys."""
    try:
        return config.load(path)
    except pydantic.ValidationError as exc:
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            console.print(f"[red]{path}: {where}:[/red] {e['msg']}", highlight=False)
        raise typer.Exit(2) from None
    except (OSError, ValueError) as exc:  # unreadable, or not TOML
        console.print(f"[red]cannot read {path}:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def build_providers(settings: Settings) -> dict[ProviderName, Provider]:
    """Only the providers some route uses: no model is loaded unless it will serve."""
    providers: dict[ProviderName, Provider] = {}
    for name in settings.used_providers():
        providers[name] = _build(name, settings)
    return providers


def _build(name: ProviderName, settings: Settings) -> Provider:
    upstream = settings.providers.get(name)
    if upstream is not None:
        from sluicegate.providers.anthropic import AnthropicProvider
        from sluicegate.providers.bedrock import BedrockProvider
        from sluicegate.providers.openai import OpenAIProvider

        if upstream.type == "openai":
            return OpenAIProvider(name, upstream)
        if upstream.type == "bedrock":
            return BedrockProvider(name, upstream)
        return AnthropicProvider(name, upstream)
    if name == "scripted":
        from sluicegate.providers.scripted import ScriptedProvider

        s = settings.scripted
        return ScriptedProvider(delay=s.delay_ms / 1000, length=s.length)
    from sluicegate.progress import console_steps
    from sluicegate.providers.engine import EngineConfig, EngineFailed
    from sluicegate.providers.local import LocalProvider, embedded_model_path, system_info

    path = settings.model or embedded_model_path()
    # Which kernels llama.cpp picked on this CPU: what its speed and numerics depend on.
    console.print(f"llama.cpp: {system_info()}", highlight=False)
    q8_0 = settings.weights == "q8_0" or (settings.weights == "auto" and not settings.model)
    config = EngineConfig(**settings.engine.model_dump())
    try:
        # Loading (and converting, the first time) shows its progress: a bar in a terminal.
        return LocalProvider(path, config, q8_0=q8_0, steps=console_steps(console))
    except EngineFailed as exc:
        console.print(f"[red]cannot serve {path.name}:[/red] {exc}")
        raise typer.Exit(ENGINE_FAILED) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8000].")] = None,
    model: ModelOpt = None,
    config_file: ConfigOpt = None,
    route: RouteOpt = None,
    ws_route: WsRouteOpt = None,
    function: Annotated[
        list[str] | None,
        typer.Option(
            "--function",
            help="NAME=FILE.py:HANDLER: a Lambda function at /fn/NAME/, "
            "/rest/NAME/ and the Lambda invoke APIs. Repeatable.",
        ),
    ] = None,
    invoke_mode: Annotated[
        list[str] | None,
        typer.Option("--invoke-mode", help="NAME=BUFFERED|RESPONSE_STREAM (default BUFFERED)."),
    ] = None,
    timeout: Annotated[
        list[str] | None, typer.Option("--timeout", help="NAME=SECONDS (default 900).")
    ] = None,
    rest_timeout: Annotated[
        float | None, typer.Option(help="The REST API emulation's integration timeout [29].")
    ] = None,
    rest_stream: Annotated[
        list[str] | None,
        typer.Option("--rest-stream", help="NAME: serve /rest/NAME/ in streaming transfer mode."),
    ] = None,
    limits: Annotated[
        str,
        typer.Option(
            help="aws: API Gateway's quotas (128 KiB messages, 32 KiB frames, 10 min idle, 2 h); "
            "relaxed: none of them, for local work."
        ),
    ] = "aws",
    tls_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Also serve over TLS on this port, with a certificate made at start-up that "
            "handlers trust: WebSocket events' domainName names it, for https://{domainName}/{stage}.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[
        str,
        typer.Option(
            help="text: uvicorn's access log and plain lines; json: one JSON object a line on "
            "standard output, with an access-log line for each request (see README)."
        ),
    ] = "text",
    otel: Annotated[
        bool,
        typer.Option(
            "--otel",
            help="Export OpenTelemetry traces (needs the otel extra): to the OTLP endpoint "
            "OTEL_EXPORTER_OTLP_* name [default: on when one is set, else off].",
        ),
    ] = False,
    bus: Annotated[
        str | None,
        typer.Option(
            help="redis://HOST:PORT/DB: share generations, sockets and signals with the other "
            "replicas on this Redis (default: this process alone)."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="auto: the embedded model's weights as Q8_0 (faster in batches, same quality), "
            "a --model file as it is; q8_0 or file force either."
        ),
    ] = None,
) -> None:
    """Serve the Bedrock Runtime API (and /metrics) with the configured providers."""
    from sluicegate import serving

    accesslog.redact_uvicorn()
    if log_format == "json":
        accesslog.use_json(log_level)
    elif log_format == "text":
        logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    else:
        raise typer.BadParameter("expected text or json", param_hint="--log-format")
    settings = apply_flags(load_settings(config_file), model, route, ws_route)
    settings = apply_functions(settings, function, invoke_mode, timeout)
    if rest_timeout is not None:
        settings = settings.model_copy(update={"rest_timeout_seconds": rest_timeout})
    if rest_stream:
        settings = settings.model_copy(
            update={"rest_stream": [*settings.rest_stream, *rest_stream]}
        )
    if weights is not None:
        if weights not in ("auto", "q8_0", "file"):
            raise typer.BadParameter("expected auto, q8_0 or file", param_hint="--weights")
        settings = settings.model_copy(update={"weights": weights})
    if limits == "relaxed":
        settings = settings.model_copy(update={"websocket": config.relaxed(settings.websocket)})
    elif limits != "aws":
        raise typer.BadParameter("expected aws or relaxed", param_hint="--limits")
    if bus is not None:
        try:
            shared = settings.bus.model_copy(update={"url": bus})
            settings = settings.model_copy(
                update={"bus": config.BusSettings.model_validate(shared.model_dump())}
            )
        except pydantic.ValidationError:
            raise typer.BadParameter("expected redis://HOST:PORT/DB", param_hint="--bus") from None
    listen = {"host": host, "port": port, "tls_port": tls_port}
    settings = settings.model_copy(update={k: v for k, v in listen.items() if v is not None})
    if settings.tls_port == settings.port:
        raise typer.BadParameter("must differ from --port", param_hint="--tls-port")
    start_tracing(otel)
    try:
        with serving.certificate(settings) as cert:
            caught = _serve(settings, cert, log_level, json_log=log_format == "json")
    finally:
        telemetry.shutdown()  # the spans still buffered are sent
    for sig in caught:  # as uvicorn does: stop gracefully, then end as the signal asked
        signal.raise_signal(sig)


def start_tracing(flag: bool) -> None:
    if not flag and telemetry.wanted(flag) and not telemetry.INSTALLED:
        console.print(
            "[yellow]warning:[/yellow] an OTLP endpoint is set (OTEL_EXPORTER_OTLP_*) but the "
            "otel extra is not installed: no traces (pip install 'sluicegate\\[otel]')",
            highlight=False,
        )
        return
    try:
        where = telemetry.configure(flag)
    except RuntimeError as exc:
        console.print(f"[red]cannot trace:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if where is not None:
        console.print(f"[green]tracing[/green] {where}", highlight=False)


def _serve(
    settings: Settings, cert: LocalCertificate | None, log_level: str, *, json_log: bool = False
) -> list[signal.Signals]:
    from sluicegate import serving
    from sluicegate.handlers import HandlerLoadError
    from sluicegate.routes.app import create_app, load_user_routes

    if settings.bus.url is not None:
        from sluicegate.bus.redis import check_reachable

        try:
            check_reachable(settings.bus.url)
        except RuntimeError as exc:
            console.print(f"[red]cannot start:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        console.print(f"[green]bus[/green] {settings.bus.url}", highlight=False)
    try:
        # Handlers are imported first: a broken one is reported before the model loads.
        app_routes = load_user_routes(settings)
    except HandlerLoadError as exc:
        console.print(f"[red]cannot load a handler:[/red] {exc}")
        raise typer.Exit(2) from None
    if settings.api_key is None and settings.host not in ("127.0.0.1", "::1", "localhost"):
        console.print(
            f"[yellow]warning:[/yellow] serving on {settings.host} without an api_key: anyone "
            "who can reach it may use the models (@connections and the Lambda API still "
            "answer this machine only). Set api_key in the config."
        )
    gateway = Gateway(settings, build_providers(settings))
    for provider in gateway.providers.values():
        console.print(f"[green]ready[/green] {provider.describe()}")
    base = f"{settings.host}:{settings.port}"
    console.print(f"Code generation page: [bold]http://{base}/[/bold]")
    console.print(f"Bedrock Runtime endpoint: [bold]http://{base}[/bold]")
    console.print(f"WebSocket API: [bold]ws://{base}/{settings.websocket.stage}[/bold]")
    if cert is not None:
        console.print(
            f"TLS listener: [bold]https://{settings.domain_name}[/bold] "
            f"(certificate authority {cert.ca_file})",
            highlight=False,
        )
    app = create_app(gateway, app_routes)
    logs: dict[str, object] = {}
    if json_log:  # our access log instead of uvicorn's, and uvicorn's lines through ours
        from sluicegate.routes.access import AccessLog

        app.add_middleware(AccessLog, stage=settings.websocket.stage)
        logs = {"access_log": False, "log_config": None}
    try:
        return serving.run(
            app, settings, cert, log_level=log_level, timeout_graceful_shutdown=5, **logs
        )
    finally:
        gateway.close()


@app.command()
def models(config_file: ConfigOpt = None, model: ModelOpt = None, route: RouteOpt = None) -> None:
    """List the routes from model ids to providers, and the model file the local provider uses."""
    from sluicegate.providers.local import embedded_model_path

    settings = apply_flags(load_settings(config_file), model, route)
    for r in settings.routes:
        upstream = settings.providers.get(r.provider)
        where: str = "built in" if upstream is None else upstream.type
        if upstream is not None and upstream.api == "invoke":
            where += ", InvokeModelWithResponseStream"
        if upstream is not None and (upstream.base_url or upstream.endpoint_url):
            where += f" at {upstream.base_url or upstream.endpoint_url}"
        sent = f", sent as {r.model!r}" if r.model else ""
        console.print(f"{r.match!r:40} -> {r.provider} ({where}){sent}", highlight=False)
    if "local" in settings.used_providers():
        path = settings.model or embedded_model_path()
        console.print(f"local model: {path} ({path.stat().st_size / 1e6:.0f} MB)", highlight=False)


@app.command()
def bench(
    url: Annotated[str, typer.Argument(help="The endpoint, e.g. http://127.0.0.1:8000.")],
    door: Annotated[str, typer.Option(help="bedrock, anthropic, openai or ws.")] = "openai",
    model: Annotated[str, typer.Option(help="The model id each request names.")] = "default",
    concurrency: Annotated[
        str, typer.Option(help="Streams at once, one level after another: 1,8,32.")
    ] = "1,8,32",
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each request.")] = 128,
    rounds: Annotated[int, typer.Option(help="Rounds per level, all streams together.")] = 3,
    prompt: Annotated[str | None, typer.Option(help="The prompt of every stream.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SLUICEGATE_API_KEY")] = None,
    region: Annotated[str, typer.Option(help="SigV4 region for the bedrock door.")] = "us-east-1",
    label: Annotated[str | None, typer.Option(help="The system's name in the table.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown table here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="A PNG: tokens over time, TTFT.")] = None,
    raw: Annotated[Path | None, typer.Option(help="Every time stamp, as JSON.")] = None,
) -> None:
    """Measure any streaming endpoint as a client sees it: TTFT, gaps, tokens/s, errors."""
    from sluicegate import bench as b

    try:
        chosen = b.door_named(door)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        raise typer.BadParameter("--concurrency takes numbers, e.g. 1,8,32") from None
    if not levels or min(levels) < 1 or rounds < 1:
        raise typer.BadParameter("--concurrency and --rounds must be at least 1")
    target = b.Target(
        url, chosen, model, prompt or b.PROMPT, max_tokens, temperature, api_key,
        region, label=label or url,
    )  # fmt: skip
    found = b.run(target, levels, rounds, warmup=1, show=console.is_terminal)
    results = [(target.name, found)]
    text = b.table(results)
    typer.echo(text)
    for line in b.errors(results)[:10]:
        console.print(f"[red]error[/red] {line}", highlight=False, soft_wrap=True)
    if out is not None:
        out.write_text(text)
    if raw is not None:
        raw.write_text(json.dumps(b.raw(results), indent=1))
    if plot is not None:
        b.plot(results, plot)
    if all(lv.figures()["errors"] == lv.figures()["streams"] for lv in found):
        raise typer.Exit(1)


@app.command()
def chat(
    url: Annotated[str, typer.Option(help="The sluicegate to talk to.")] = "http://127.0.0.1:8000",
    model: Annotated[str, typer.Option("--model", "-m", help="Model id.")] = "default",
    door: Annotated[str, typer.Option(help="ws, bedrock, anthropic or openai.")] = "ws",
    api_key: Annotated[
        str | None, typer.Option(envvar="SLUICEGATE_API_KEY", help="The server's api_key.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per answer.")] = 1024,
) -> None:
    """Chat in the terminal: answers stream as Markdown; Ctrl-C stops one, Ctrl-D leaves."""
    from sluicegate import chat as client

    if door not in client.DOORS:
        raise typer.BadParameter(f"expected one of {', '.join(client.DOORS)}", param_hint="--door")
    raise typer.Exit(client.main(url, model, door, api_key, max_tokens))


def main() -> None:
    app()
