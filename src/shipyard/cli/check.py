"""`shipyard check`: the readiness verdict (a thin layer over `shipyard.readiness.check`)."""

from __future__ import annotations

import contextlib
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shipyard.cli.common import config_path, console, err_console, fail, resolve_config
from shipyard.config import env
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.readiness.check.deployment import StartedDeployment

__all__ = ["GATE_MISSED_EXIT", "check"]

GATE_MISSED_EXIT = 3
_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def check(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shipyard.yaml of the deployment (default: $SHIPYARD_CONFIG or "
        "./shipyard.yaml).")] = None,
    url: Annotated[str | None, typer.Option(
        help="Root URL of the running gateway. Without it the check starts the deployment "
        "itself: the gateway on a free port, and shipyard sim for providers on 127.0.0.1 "
        "where nothing listens; stopped afterwards.")] = None,
    api_key_env: Annotated[str, typer.Option(
        help="Environment variable holding a platform admin key (it creates the temporary "
        "tenants and keys the check uses).")] = "SHIPYARD_API_KEY",
    model: Annotated[str | None, typer.Option(
        help="Chat model alias to test (default: the config's first chat model).")] = None,
    service: Annotated[str | None, typer.Option(
        help="Hosted service the trust challenge attacks (default: when no chat model runs "
        "input guards, the first service that does).")] = None,
    sim: Annotated[list[str] | None, typer.Option(
        help="Root URL of a `shipyard sim` behind the gateway, for the chaos drills "
        "(repeatable; without one, chaos is skipped).")] = None,
    sim_admin_token: Annotated[str | None, typer.Option(
        help="The sim's --admin-token, if it has one.")] = None,
    pipeline: Annotated[list[Path] | None, typer.Option(
        help="A data pipeline YAML to audit (dry run: nothing is written; repeatable). "
        "Datasets registered in the store are audited too.")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="About a minute: short load probes and chaos phases, a sample of the "
        "red-team corpus.")] = False,
    slo_p99_ms: Annotated[float | None, typer.Option(
        help="Latency objective of the load search (default: the model's latency SLO, else "
        "1000).")] = None,
    slo_error_rate: Annotated[float | None, typer.Option(
        help="Error-rate objective (default: 1 - the availability SLO, else 0.01).")] = None,
    target_rate: Annotated[float, typer.Option(
        help="Peak requests per second the capacity plan sizes for.")] = 50.0,
    store_down_cmd: Annotated[str | None, typer.Option(
        help="Shell command that takes the store down (store-down drill; with "
        "--store-up-cmd).")] = None,
    store_up_cmd: Annotated[str | None, typer.Option(
        help="Shell command that brings the store back.")] = None,
    store_url: Annotated[str | None, typer.Option(
        help="The gateway's store, if not the config's store.url.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for readiness.html, readiness.json and the sub-reports.")
    ] = Path("readiness"),
    html: Annotated[bool, typer.Option(
        help="Write readiness.html (needs shipyard[report]).")] = True,
    gate: Annotated[list[str] | None, typer.Option(
        help="CI thresholds, e.g. --gate overall=70 --gate security=80 --gate no-fail; "
        f"exit {GATE_MISSED_EXIT} when one is missed.")] = None,
    save: Annotated[bool, typer.Option(
        help="Store the verdict for the dashboard's readiness page.")] = True,
) -> None:
    """Score production readiness: data, integration & security, scale & reliability, trust,
    monitoring & lifecycle — each with findings, fixes and evidence — in an HTML and JSON
    report. Traffic uses temporary tenants and keys, revoked afterwards.

    Example:

      shipyard check -c shipyard.yaml --url http://127.0.0.1:8000 --sim http://127.0.0.1:9100 \\
          --quick --gate overall=60

      shipyard check -c examples/support-assistant/shipyard.yaml --quick   # starts it itself
    """
    from shipyard.readiness.check import SECTIONS, CheckOptions, parse_gate, run_check
    from shipyard.readiness.check.deployment import started_deployment
    from shipyard.readiness.check.report import write_html, write_json
    from shipyard.readiness.report import ensure_html_support
    from shipyard.store import create_store_engine, migrate
    from shipyard.store.readiness import save_run

    file = config_path(config)
    environ = env.snapshot()
    if url is None and not environ.get(api_key_env):
        # The deployment the check starts accepts this key through {$env: NAME} in
        # auth.api_keys, as `shipyard demo` does.
        environ[api_key_env] = "sk-check-" + secrets.token_urlsafe(18)
    _, cfg = resolve_config(file, environ)
    key = environ.get(api_key_env)
    if not key and not cfg.auth.disabled:
        raise fail(f"${api_key_env} is not set; export a platform admin key (e.g. the one in "
                   "auth.api_keys) or name another variable with --api-key-env.")
    try:
        rules = parse_gate(gate or [])
        if html:
            ensure_html_support()
    except ShipyardError as exc:
        raise fail(exc) from None
    out.mkdir(parents=True, exist_ok=True)
    engine = create_store_engine(store_url or cfg.store.url)
    stack = contextlib.ExitStack()
    started: StartedDeployment | None = None
    try:
        migrate(engine)
        sims = list(sim or [])
        if url is None:
            # SIGTERM (a CI timeout) must stop what we started and remove the config copy.
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
            log = out / "deployment.log"
            err_console.print(f"no --url: starting the deployment of {escape(str(file))} "
                              f"(its output goes to {escape(str(log))}) ...", highlight=False)
            # It starts in a thread while the data audit (no requests) runs here.
            started = stack.enter_context(started_deployment(file, cfg, environ, log=log,
                                                             background=True))
            sims += started.deployment.sim_urls
        root = (url or started.deployment.url  # type: ignore[union-attr]
                ).rstrip("/").removesuffix("/v1")
        options = CheckOptions(
            config=cfg, config_file=file, url=root, api_key=key or "", engine=engine,
            model=model, service=service, sims=sims, sim_admin_token=sim_admin_token,
            pipelines=list(pipeline or []), quick=quick, slo_p99_ms=slo_p99_ms,
            slo_error_rate=slo_error_rate, target_rate=target_rate,
            store_down_cmd=store_down_cmd, store_up_cmd=store_up_cmd, out_dir=out, gate=rules)
        titles = {k: t for k, t, _ in SECTIONS}
        bar = Progress(TextColumn("{task.description:<24}"), BarColumn(bar_width=30),
                       TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                       console=err_console, transient=False)
        with bar:
            tasks = {k: bar.add_task(t, total=1.0, detail="waiting") for k, t in titles.items()}

            def progress(stage: str, done: float, detail: str) -> None:
                bar.update(tasks[stage], completed=done, detail=escape(detail))

            report = run_check(options, progress,
                               gateway=None if started is None else started.wait)
        if started is not None:
            report.notes.append(started.note())
            if started.startup_s is not None:
                report.timings["deployment start-up (overlapping the data audit)"] = \
                    started.startup_s
        t0 = time.perf_counter()
        stack.close()
        if started is not None:
            report.timings["deployment stop"] = time.perf_counter() - t0
        data = report.to_dict()
        write_json(data, out / "readiness.json")
        if html:
            write_html(data, out / "readiness.html")
        if save:
            data["run_id"] = save_run(engine, data)
    except ShipyardError as exc:
        raise fail(exc) from None
    except PermissionError as exc:
        raise fail(str(exc)) from None
    finally:
        stack.close()
        engine.dispose()
    _print(data)
    console.print(f"wrote {out / 'readiness.json'}" + (f" and {out / 'readiness.html'}"
                                                       if html else ""), highlight=False)
    if data["gate"]["given"] and not data["gate"]["passed"]:
        console.print("[bold red]gate missed:[/] " + escape("; ".join(data["gate"]["violations"])),
                      highlight=False)
        raise typer.Exit(GATE_MISSED_EXIT)


def _print(data: dict[str, object]) -> None:
    table = Table(title=f"readiness of {escape(str(data['target']))}: "
                        f"{data['score']} / 100 ({data['mode']}, {data['seconds']} s)")
    for column in ("challenge", "score", "status", "fail / warn"):
        table.add_column(column)
    for s in data["sections"]:  # type: ignore[attr-defined]
        style = _STYLE[s["status"]]
        fails = [f["id"] for f in s["findings"] if f["status"] == "fail"]
        warns = [f["id"] for f in s["findings"] if f["status"] == "warn"]
        table.add_row(s["title"], "-" if s["score"] is None else f"{s['score']:g}",
                      f"[{style}]{s['status']}[/]",
                      escape(", ".join(fails + warns)[:120]))
    console.print(table)
    timings = data.get("timings") or {}
    if timings:  # where the time went, phase by phase
        console.print("[dim]time: " + escape(" · ".join(
            f"{k} {v:.1f} s" for k, v in timings.items())) + "[/]",  # type: ignore[attr-defined]
            highlight=False)
