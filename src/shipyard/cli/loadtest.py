"""`shipyard loadtest`: open-loop load and SLO capacity search against an OpenAI-compatible URL."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shipyard.cli.common import console, err_console
from shipyard.cli.common import fail as _fail
from shipyard.config import env
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.readiness import loadtest as engine

__all__ = ["loadtest"]

SLO_MISSED_EXIT = 3


def fail(message: ShipyardError | str) -> typer.Exit:
    return _fail(message)  # common.fail escapes rich markup ('shipyard[report]')


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f} ms"


def _bodies(path: Path | None) -> tuple[Any, tuple[Any, ...]]:
    """(one body, several bodies) from --body-file: a JSON object, or a .jsonl file (one
    service input per line, sent in turn)."""
    if path is None:
        return None, ()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"--body-file is '{path}' and cannot be read ({exc.strerror}); pass a JSON "
                   "file with one request body, or a .jsonl file of service inputs.") from None
    if path.suffix == ".jsonl":
        inputs = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                inputs.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise fail(f"--body-file '{path}' line {number} is not valid JSON ({exc}); write "
                           "one JSON input per line.") from None
        if not inputs:
            raise fail(f"--body-file '{path}' has no inputs; write one JSON input per line.")
        return None, tuple(inputs)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise fail(f"--body-file '{path}' is not valid JSON ({exc}); write one chat completions "
                   'request body, e.g. {"messages": [{"role": "user", "content": "Hi"}]}, or a '
                   "service's input.") from None
    return data, ()


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    TextColumn("left"), TimeRemainingColumn(),
                    TextColumn("{task.fields[stats]}"), console=err_console, transient=False)


def _stats(p: engine.Progress) -> str:
    p99 = "-" if math.isnan(p.recent_p99_ms) else f"{p.recent_p99_ms:,.0f} ms"
    return (f"sent {p.sent:,} · ok {p.ok:,} · errors {p.errors:,} · in flight {p.in_flight:,} "
            f"· p99 {p99}")


def _print_run(result: engine.LoadResult, title: str = "Load test") -> None:
    table = Table(title=title, show_header=False, show_edge=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    lat = result.latency
    table.add_row("target", f"{result.endpoint} · {result.target}")
    table.add_row("profile", f"{result.profile} · {result.arrivals} arrivals · "
                  f"{result.duration_s:g} s")
    table.add_row("requests", f"{result.scheduled:,} scheduled · {result.sent:,} sent · "
                  f"{result.ok:,} ok · {result.error_count:,} errors ({result.error_rate:.2%})"
                  + (f" · {result.unfinished:,} unfinished" if result.unfinished else ""))
    table.add_row("rate", f"offered {result.offered_rate:,.1f}/s · achieved "
                  f"{result.throughput:,.1f}/s · ok {result.goodput:,.1f}/s")
    table.add_row("latency", f"p50 {_ms(lat.p50_ms)} · p90 {_ms(lat.p90_ms)} · "
                  f"p95 {_ms(lat.p95_ms)} · p99 {_ms(lat.p99_ms)} · max {_ms(lat.max_ms)}")
    if result.ttft is not None:
        table.add_row("first token", f"p50 {_ms(result.ttft.p50_ms)} · "
                      f"p99 {_ms(result.ttft.p99_ms)}")
    table.add_row("send lag", f"p99 {_ms(result.send_lag.p99_ms)} · max "
                  f"{_ms(result.send_lag.max_ms)}")
    if result.errors:
        table.add_row("errors", " · ".join(f"{k}: {v:,}" for k, v in result.errors.items()))
    console.print(table)
    if result.client_limited:
        console.print(_LAG_WARNING.format(lag=_ms(result.send_lag.p99_ms)), highlight=False)


_LAG_WARNING = ("[yellow]warning:[/] the client launched requests late (send lag p99 {lag}): "
                "the load generator was saturated too. Latency still counts the delay; run it "
                "on another machine for a cleaner measure of the target.")


def _preflight(target: engine.Target) -> None:
    from shipyard.readiness import loadtest as engine

    status, text = engine.check_target(target)
    if status != 200:
        console.print(f"[yellow]warning:[/] the first request answered {status}: "
                      f"{escape(text.strip()[:200])} The run goes on and counts such answers as "
                      "errors.", highlight=False)


def _print_search(result: engine.SearchResult) -> None:
    table = Table(title="Probes", show_edge=False, title_justify="left")
    for name in ("rate/s", "verdict", "achieved/s", "p50", "p99", "errors", "send lag p99"):
        table.add_column(name)
    for p in result.probes:
        verdict = "[green]pass[/]" if p.passed else f"[red]fail[/] ({'; '.join(p.reasons)})"
        lag = _ms(p.result.send_lag.p99_ms)
        table.add_row(f"{p.rate:g}", verdict, f"{p.result.throughput:,.1f}",
                      _ms(p.result.latency.p50_ms), _ms(p.result.latency.p99_ms),
                      f"{p.result.error_rate:.2%}",
                      f"[yellow]{lag}[/]" if p.result.client_limited else lag)
    console.print(table)
    limited = [p for p in result.probes if p.result.client_limited]
    if limited:
        worst = max(p.result.send_lag.p99_ms for p in limited)
        console.print(_LAG_WARNING.format(lag=_ms(worst)), highlight=False)
    slo = f"p99 < {result.slo.p99_ms:g} ms and errors < {result.slo.error_rate:.2%}"
    if result.max_rate is None:
        console.print(f"[red]No rate met the SLO[/] ({slo}); even --low {result.low:g}/s "
                      "missed it. Lower --low or relax the SLO.", highlight=False)
    elif result.limited_by == "high":
        console.print(f"[green]Max sustainable rate ≥ {result.max_rate:g}/s[/] at {slo}: the "
                      "upper bound passed; raise --high to search further.", highlight=False)
    else:
        console.print(f"[green]Max sustainable rate: {result.max_rate:g}/s[/] at {slo}.",
                      highlight=False)


def _write(result: engine.LoadResult | engine.SearchResult, json_path: Path | None,
           html_path: Path | None) -> None:
    from shipyard.readiness import report

    if json_path is not None:
        report.write_json(result, json_path)
        console.print(f"Wrote {json_path}.")
    if html_path is not None:
        report.write_html(result, html_path)
        console.print(f"Wrote {html_path}.")


def loadtest(
    url: Annotated[str, typer.Argument(
        help="API base URL of any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; "
        "requests go to {url}/chat/completions, or {url}/services/NAME/invoke with "
        "--service.")],
    model: Annotated[str | None, typer.Option(
        help="Model name to send (e.g. demo behind 'shipyard demo', sim-chat on "
        "'shipyard sim'). Optional when --body-file has a model.")] = None,
    service: Annotated[str | None, typer.Option(
        help="Load-test a Shipyard hosted service instead of a model: its input comes from "
        "--body-file (one JSON input, or a .jsonl file with one input per line, sent in "
        "turn).")] = None,
    profile: Annotated[str | None, typer.Option(
        help="Offered load: 100 (constant), step:100,200,400 (each for --step-duration), "
        "'ramp:50->500' (over --duration; quoted). Default: constant 10/s.")] = None,
    rate: Annotated[float | None, typer.Option(
        help="Shorthand for --profile constant:RATE (requests per second).")] = None,
    duration: Annotated[float, typer.Option(
        help="Run length in seconds (a step profile: split evenly unless --step-duration).")
    ] = 30.0,
    step_duration: Annotated[float | None, typer.Option(
        help="Seconds per step: of a step profile, or of each probe with --find-max-rate "
        "(default 5).")] = None,
    arrivals: Annotated[str, typer.Option(
        help="uniform (evenly spaced) or poisson (random gaps, like independent users).")
    ] = "uniform",
    seed: Annotated[int | None, typer.Option(help="Random seed for poisson arrivals.")] = None,
    max_in_flight: Annotated[int, typer.Option(
        help="Cap on outstanding requests; arrivals over it are NOT sent and count as "
        "client_overload errors.")] = 5000,
    connections: Annotated[int, typer.Option(
        help="Connection pool size; requests waiting for a socket stay on the clock.")] = 1000,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.")] = 30.0,
    api_key: Annotated[str | None, typer.Option(
        help="Bearer key. Prefer --api-key-env so the key stays out of shell history.")] = None,
    api_key_env: Annotated[str, typer.Option(
        help="Environment variable holding the key when --api-key is not given.")
    ] = "OPENAI_API_KEY",
    prompt: Annotated[str, typer.Option(help="User message to send.")] = (
        "Say hello in one short sentence."),
    body_file: Annotated[Path | None, typer.Option(
        help="JSON file with the whole request body (instead of --prompt).")] = None,
    stream: Annotated[bool, typer.Option(
        "--stream", help="Stream answers (SSE) and measure time to first token.")] = False,
    find_max_rate: Annotated[bool, typer.Option(
        "--find-max-rate", help="Search the highest constant rate that meets the SLO.")] = False,
    slo_p99_ms: Annotated[float | None, typer.Option(
        help="SLO: p99 latency must stay below this, ms. Without --find-max-rate the run is "
        f"checked against it and the command exits {SLO_MISSED_EXIT} when missed.")] = None,
    slo_error_rate: Annotated[float, typer.Option(
        help="SLO: error share must stay below this (0.01 = 1%).")] = 0.01,
    low: Annotated[float, typer.Option(help="Search: lowest rate to probe, per second.")] = 10.0,
    high: Annotated[float, typer.Option(help="Search: highest rate to probe, per second.")
    ] = 2000.0,
    tolerance: Annotated[float, typer.Option(
        help="Search: stop when pass and fail rates are this close (relative).")] = 0.05,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Write the full result as JSON here.")] = None,
    html_path: Annotated[Path | None, typer.Option(
        "--html", help="Write an offline HTML report with plots here (needs "
        "pip install 'shipyard\\[report]').")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Load-test an OpenAI-compatible URL at an open-loop rate, or find its max rate at an SLO.

    Requests are launched at their scheduled times whatever the server does, and latency runs
    from the scheduled time, so queueing cannot hide (no coordinated omission).

    Examples:
      shipyard loadtest http://127.0.0.1:9100/v1 --model sim-chat --rate 100 --duration 20
      shipyard loadtest http://127.0.0.1:8000/v1 --model demo --api-key-env SHIPYARD_API_KEY \\
          --profile 'ramp:50->500' --duration 60 --arrivals poisson --html report.html
      shipyard loadtest http://127.0.0.1:8000/v1 --model demo --profile step:50,100,200 \\
          --step-duration 10 --stream --json run.json
      shipyard loadtest http://127.0.0.1:8000/v1 --model demo --find-max-rate \\
          --slo-p99-ms 500 --slo-error-rate 0.01 --low 10 --high 2000 --html capacity.html
      shipyard loadtest http://127.0.0.1:8000/v1 --service triage --body-file tickets.jsonl \\
          --api-key-env SHIPYARD_API_KEY --rate 50 --duration 20
    """
    try:
        _run(url=url, model=model, service=service, profile=profile, rate=rate, duration=duration,
             step_duration=step_duration, arrivals=arrivals, seed=seed,
             max_in_flight=max_in_flight, connections=connections, timeout=timeout,
             api_key=api_key, api_key_env=api_key_env, prompt=prompt, body_file=body_file,
             stream=stream, find_max_rate=find_max_rate, slo_p99_ms=slo_p99_ms,
             slo_error_rate=slo_error_rate, low=low, high=high, tolerance=tolerance,
             json_path=json_path, html_path=html_path, quiet=quiet)
    except ShipyardError as exc:
        raise fail(exc) from None


def _run(*, url: str, model: str | None, service: str | None, profile: str | None,
         rate: float | None,
         duration: float, step_duration: float | None, arrivals: str, seed: int | None,
         max_in_flight: int, connections: int, timeout: float, api_key: str | None,
         api_key_env: str, prompt: str, body_file: Path | None, stream: bool,
         find_max_rate: bool, slo_p99_ms: float | None, slo_error_rate: float, low: float,
         high: float, tolerance: float, json_path: Path | None, html_path: Path | None,
         quiet: bool) -> None:
    from shipyard.readiness import loadtest as engine
    from shipyard.readiness import report

    if arrivals not in ("uniform", "poisson"):
        raise fail(f"--arrivals is '{arrivals}'; use uniform or poisson.")
    if html_path is not None:
        report.ensure_html_support()  # fail before the run, not after it
    if profile is not None and rate is not None:
        raise fail("Both --profile and --rate are set; pass one (--rate 100 is the same as "
                   "--profile constant:100).")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise fail(f"--rate is {rate:g}; it must be a positive number of requests per second, "
                   "e.g. --rate 50.")
    body, bodies = _bodies(body_file)
    target = engine.Target(url=url, model=model, service=service,
                           api_key=api_key or env.get(api_key_env), prompt=prompt, body=body,
                           bodies=bodies, stream=stream, timeout_s=timeout)
    slo = None if slo_p99_ms is None else engine.SLO(p99_ms=slo_p99_ms,
                                                      error_rate=slo_error_rate)
    mode: engine.Arrivals = "poisson" if arrivals == "poisson" else "uniform"
    if find_max_rate:
        if slo is None:
            raise fail("--find-max-rate needs an SLO; pass --slo-p99-ms (e.g. 500) and "
                       "optionally --slo-error-rate (default 0.01).")
        if profile is not None or rate is not None:
            raise fail("--find-max-rate chooses the rates itself; drop --profile/--rate and "
                       "bound the search with --low and --high.")
        _preflight(target)
        _search(target, slo, low=low, high=high, step=step_duration or 5.0, tolerance=tolerance,
                arrivals=mode, seed=seed, max_in_flight=max_in_flight, connections=connections,
                json_path=json_path, html_path=html_path, quiet=quiet)
        return
    spec, option = (f"constant:{rate:g}", "--rate") if rate is not None else (
        profile or "constant:10", "--profile")
    shape = engine.parse_profile(spec, duration_s=duration, step_duration_s=step_duration,
                                 arrivals=mode, seed=seed, option=option)
    _preflight(target)
    if quiet:
        result = engine.run_load(target, shape, max_in_flight=max_in_flight,
                                 connections=connections)
    else:
        with _bar() as bar:
            task = bar.add_task(f"{shape.spec}", total=shape.duration_s, stats="")

            def show(p: engine.Progress) -> None:
                bar.update(task, completed=min(p.elapsed_s, p.duration_s), stats=_stats(p))

            result = engine.run_load(target, shape, max_in_flight=max_in_flight,
                                     connections=connections, on_progress=show)
    _print_run(result)
    _write(result, json_path, html_path)
    if slo is not None:
        missed = slo.violations(result)
        if missed:
            console.print(f"[red]SLO missed:[/] {'; '.join(missed)}.", highlight=False)
            raise typer.Exit(SLO_MISSED_EXIT)
        console.print("[green]SLO met.[/]")


def _search(target: engine.Target, slo: engine.SLO, *, low: float, high: float, step: float,
            tolerance: float, arrivals: engine.Arrivals, seed: int | None, max_in_flight: int,
            connections: int, json_path: Path | None, html_path: Path | None,
            quiet: bool) -> None:
    from shipyard.readiness import loadtest as engine

    def announce(p: engine.Probe) -> None:
        verdict = "[green]pass[/]" if p.passed else f"[red]fail[/] ({'; '.join(p.reasons)})"
        console.print(f"probe {p.rate:g}/s: {verdict} · p99 {_ms(p.result.latency.p99_ms)} · "
                      f"errors {p.result.error_rate:.2%}", highlight=False)

    if quiet:
        result = engine.find_max_rate(target, slo, low=low, high=high, step_duration_s=step,
                                      tolerance=tolerance, arrivals=arrivals, seed=seed,
                                      max_in_flight=max_in_flight, connections=connections,
                                      on_probe=announce)
    else:
        with _bar() as bar:
            tasks: dict[float, Any] = {}

            def show(rate: float, p: engine.Progress) -> None:
                if rate not in tasks:
                    tasks[rate] = bar.add_task(f"probe {rate:g}/s", total=p.duration_s,
                                               stats="")
                bar.update(tasks[rate], completed=min(p.elapsed_s, p.duration_s),
                           stats=_stats(p))

            result = engine.find_max_rate(target, slo, low=low, high=high,
                                          step_duration_s=step, tolerance=tolerance,
                                          arrivals=arrivals, seed=seed,
                                          max_in_flight=max_in_flight, connections=connections,
                                          on_progress=show)
    _print_search(result)
    _write(result, json_path, html_path)
