"""`shipyard`: the command line (serve, config, traces, feedback, pii, guards, redteam, ...)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shipyard._version import __version__
from shipyard.cli import alerts as alerts_cli
from shipyard.cli import audit as audit_cli
from shipyard.cli import connectors as connectors_cli
from shipyard.cli import data as data_cli
from shipyard.cli import drift as drift_cli
from shipyard.cli import escalations as escalations_cli
from shipyard.cli import feedback as feedback_cli
from shipyard.cli import jobs as jobs_cli
from shipyard.cli import pii as pii_cli
from shipyard.cli import traces as traces_cli
from shipyard.cli import versions as versions_cli
from shipyard.cli import webhooks as webhooks_cli
from shipyard.cli.chaos import chaos
from shipyard.cli.check import check
from shipyard.cli.common import (
    config_path,
    console,
    fail,
    open_store,
    resolve_config,
    store_error,
    warn_inline_secrets,
)
from shipyard.cli.demo import demo
from shipyard.cli.evals import evaluate
from shipyard.cli.keys import bootstrap_admin, has_admin, keys_app, tenants_app
from shipyard.cli.loadtest import loadtest
from shipyard.cli.redteam import guards_app, redteam
from shipyard.cli.retrain import reload, retrain
from shipyard.cli.serving import prepare as _prepare
from shipyard.cli.serving import server_argv as _server_argv
from shipyard.cli.status import status
from shipyard.cli.usage import usage
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="Shipyard takes AI prototypes to production: an OpenAI-compatible gateway and "
    "service host with traces, limits and proof.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate and document shipyard.yaml.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(traces_cli.app, name="traces")
app.command("loadtest")(loadtest)
app.command("status")(status)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.command("usage")(usage)
app.add_typer(audit_cli.app, name="audit")
app.add_typer(feedback_cli.app, name="feedback")
app.add_typer(pii_cli.app, name="pii")
app.add_typer(escalations_cli.app, name="escalations")
app.add_typer(webhooks_cli.app, name="webhooks")
app.add_typer(connectors_cli.app, name="connectors")
app.add_typer(jobs_cli.app, name="jobs")
app.command("redteam")(redteam)
app.add_typer(guards_app, name="guards")
app.add_typer(alerts_cli.app, name="alerts")
app.add_typer(drift_cli.app, name="drift")
app.add_typer(data_cli.app, name="data")
app.add_typer(versions_cli.app, name="versions")
app.command("eval")(evaluate)
app.command("retrain")(retrain)
app.command("reload")(reload)
app.command("demo")(demo)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def version() -> None:
    """Print the Shipyard version."""
    console.print(f"shipyard {__version__}")


@app.command()
def init(
    path: Annotated[Path, typer.Option("--path", help="Where to write the file.")] = Path(
        "shipyard.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    key: Annotated[bool, typer.Option(
        help="Also create the first admin API key in the new store (printed once).")] = True,
) -> None:
    """Write a commented starter shipyard.yaml and create the first admin key."""
    from shipyard.config.starter import STARTER_CONFIG

    if path.exists() and not force:
        raise fail(f"'{path}' already exists; pass --force to overwrite it or --path to write "
                   "elsewhere.")
    path.write_text(STARTER_CONFIG, encoding="utf-8")
    console.print(f"Wrote {path}.")
    if key:
        engine = open_store(path, None, migrate=True)
        try:
            if has_admin(engine):
                console.print("The store already has an admin key; not creating another "
                              "('shipyard keys create --bootstrap --force' makes one).")
            else:
                bootstrap_admin(engine)
        finally:
            engine.dispose()
    console.print("Next: export SHIPYARD_API_KEY (the key callers of auth.api_keys use, or the "
                  "admin key above), then 'shipyard config check' and 'shipyard serve'.",
                  highlight=False)


@config_app.command("check")
def config_check(
    config: ConfigOpt = None,
    store: Annotated[bool, typer.Option(help="Also connect to the store.")] = True,
    strict: Annotated[bool, typer.Option(
        help="Fail on a secret written inline in the file (instead of a warning).")] = False,
) -> None:
    """Validate shipyard.yaml (and import every Python function it names) without serving."""
    import asyncio

    from sqlalchemy import create_engine

    from shipyard.config.loader import install_python_path
    from shipyard.gateway.runtime import Gateway

    file, cfg = resolve_config(config, strict=strict)
    warn_inline_secrets(file, cfg)
    try:
        # Imports every function and schema: the same checks as serve. Without --store, an
        # in-memory engine keeps the check from touching the configured store at all.
        engine = None if store else create_engine("sqlite://")
        install_python_path(cfg)
        gateway = Gateway(cfg, engine=engine)
    except ShipyardError as exc:
        raise fail(exc) from None
    if store:
        try:
            reachable = asyncio.run(gateway.store_reachable())
        finally:
            gateway.engine.dispose()
        if not reachable:
            raise fail(f"{file}: the store at store.url cannot be reached; check the URL and "
                       "that the database is running.")
    console.print(f"[green]✓[/] {file} is valid: {_count(len(cfg.providers), 'provider')}, "
                  f"{_count(len(cfg.models), 'model')}, "
                  f"{_count(len(cfg.services), 'service')}.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@config_app.command("docs")
def config_docs(
    output: Annotated[Path | None, typer.Option("--output", "-o",
                      help="Write here instead of stdout.")] = None,
) -> None:
    """Print the configuration reference (Markdown) generated from the settings table."""
    from shipyard.config.docs import render_reference

    text = render_reference()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"Wrote {output}.")


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (server.port).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (server.workers).")] = None,
    strict: Annotated[bool, typer.Option(
        help="Refuse to start when a secret is written inline in the config file.")] = False,
) -> None:
    """Serve the gateway: OpenAI-compatible API, hosted services, /metrics and probes."""
    from shipyard.config.server import per_process_state

    file = config_path(config)
    cfg = _prepare(file, strict=strict)
    server = cfg.server
    count = workers or server.workers
    problem = per_process_state(cfg.state, count)
    if problem is not None:
        raise fail(f"{file}: {problem}")  # fail() escapes rich markup: 'shipyard[redis]'
    argv = _server_argv(file, host or server.host, port or server.port, count)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the lean serving process: same PID and signals, without the CLI's imports.
    os.execv(sys.executable, argv)


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9100,
    latency: Annotated[str, typer.Option(
        help="Latency before answering: ms (50) or uniform:20,80 | normal:50,10 | "
        "lognormal:50,0.5 | exp:50.")] = "0",
    token_delay_ms: Annotated[float, typer.Option(
        help="Delay between streamed chunks (slow streams), ms.")] = 0.0,
    error_rate: Annotated[list[str] | None, typer.Option(
        help="STATUS=RATE, repeatable: --error-rate 500=0.3 --error-rate 429=0.05 "
        "(408, 429, 500, 502, 503, 504).")] = None,
    hang_rate: Annotated[float, typer.Option(help="Share of requests that hang.")] = 0.0,
    hang_s: Annotated[float, typer.Option(help="How long a hang lasts, seconds.")] = 3600.0,
    reset_rate: Annotated[float, typer.Option(
        help="Share of requests whose connection is reset.")] = 0.0,
    malformed_rate: Annotated[float, typer.Option(
        help="Share of answers that are malformed JSON.")] = 0.0,
    cut_rate: Annotated[float, typer.Option(
        help="Share of answers cut mid-way (streams: after --cut-after chunks).")] = 0.0,
    cut_after: Annotated[int, typer.Option(help="Chunks sent before a cut.")] = 2,
    omit_usage: Annotated[bool, typer.Option(help="Leave 'usage' out of answers.")] = False,
    api_key: Annotated[str | None, typer.Option(
        help="Require this key on model routes, like a real provider, where the format "
        "sends it (bearer; anthropic x-api-key; gemini x-goog-api-key); bedrock takes it as a "
        "bearer API key or as the AWS secret access key of a SigV4 signature.")] = None,
    admin_token: Annotated[str | None, typer.Option(
        help="Require this bearer token on the /_sim admin routes.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for fault draws.")] = None,
    wire: Annotated[str, typer.Option(
        "--format", help="Wire API to speak: openai, or anthropic (Messages API), gemini "
        "(Generative Language API), bedrock (Converse API), ollama (native /api/chat) or azure "
        "(Azure OpenAI URLs and api-key), to test those provider kinds offline.")] = "openai",
) -> None:
    """Serve a SIMULATED model with fault knobs (tests, demos, chaos): OpenAI-compatible,
    or speaking another provider's API with --format.

    Knobs can be changed while it runs: curl -X PATCH localhost:9100/_sim/faults
    -d '{"error_rates": {"500": 0.3}}'.
    """
    from shipyard.sim.engine import Faults
    from shipyard.sim.server import SIM_FORMATS, SimServer, run_sim

    if wire not in SIM_FORMATS:
        raise fail(f"--format is '{wire}'; use one of {', '.join(SIM_FORMATS)}.")
    rates: dict[str, float] = {}
    for item in error_rate or []:
        status, _, rate = item.partition("=")
        try:
            rates[status.strip()] = float(rate)
        except ValueError:
            raise fail(f"--error-rate is '{item}'; write STATUS=RATE, e.g. 500=0.3.") from None
    try:
        faults = Faults(latency=latency, token_delay_ms=token_delay_ms, error_rates=rates,
                        hang_rate=hang_rate, hang_s=hang_s, reset_rate=reset_rate,
                        malformed_rate=malformed_rate, cut_rate=cut_rate,
                        cut_after_chunks=cut_after, omit_usage=omit_usage)
    except ValueError as exc:
        raise fail(f"Fault knobs are invalid: {exc}.") from None
    _logging("info")
    where = {"openai": "OpenAI-compatible model on {url}/v1 (models: sim-chat, sim-embed)",
             "anthropic": "Anthropic Messages API on {url}/v1/messages",
             "gemini": "Gemini API on {url}/v1beta/models/MODEL:generateContent",
             "bedrock": "Bedrock Converse API on {url}/model/MODEL/converse",
             "ollama": "Ollama API on {url}/api/chat",
             "azure": "Azure OpenAI API on {url}/openai/deployments/NAME/chat/completions"
             }[wire]
    console.print("[bold yellow]SIMULATED[/] " + where.format(url=f"http://{host}:{port}")
                  + ". Not a real model.")
    run_sim(SimServer(faults, api_key=api_key, admin_token=admin_token, seed=seed),
            host=host, port=port, format=wire)


def main() -> None:
    try:
        app()
    except Exception as exc:
        # A store that fails in the middle of a command: one sentence, not a traceback.
        # (sqlalchemy is imported by the commands that use it, not for --help.)
        database = sys.modules.get("sqlalchemy.exc")
        if database is None or not isinstance(exc, database.SQLAlchemyError):
            raise
        fail(f"The store failed during this command: {store_error(exc)}. Check that the "
             "database is running and reachable, then run the command again.")
        sys.exit(1)


app.command("chaos")(chaos)
app.command("check")(check)
