"""`shipyard chaos`: named fault drills against a running gateway, through `shipyard sim` knobs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from shipyard.cli.common import console, err_console
from shipyard.cli.common import fail as _fail
from shipyard.config import env
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.readiness import chaos as engine

__all__ = ["chaos"]

FAILED_EXIT = 3


def fail(message: ShipyardError | str) -> typer.Exit:
    # Messages quote user input (JSON knobs, shell commands): not rich markup.
    return _fail(message)  # common.fail escapes rich markup ('shipyard[report]')


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f} ms"


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _circuits(status: dict[str, Any] | None) -> str:
    if status is None:
        return "-"
    if "error" in status:
        return "unavailable"
    shown = [f"{name} {d['circuit']}" + (f" (opened {d['times_opened']}x)"
                                         if d["times_opened"] else "")
             for model in (status.get("models") or {}).values()
             for name, d in model["deployments"].items()
             if d["circuit"] != "closed" or d["times_opened"]]
    return ", ".join(shown) or "all closed"


def _streams(counts: engine.StreamCounts) -> str:
    cut = counts.clean_done_after_cut
    return (f"{counts.error_event} / {counts.no_done} / "
            + (f"[red]{cut}[/]" if cut else "0"))


def _print(report: engine.ChaosReport) -> None:
    summary = Table(title=f"Chaos: {report.gateway_url} · model {report.model} · "
                    f"{report.rate:g} req/s ({report.stream_share:.0%} streams)",
                    title_justify="left", show_edge=False)
    for name in ("scenario", "ok baseline", "ok fault", "ok recovery", "p99 baseline → fault",
                 "recovery", "streams failed: error event / no [DONE] / clean [DONE]",
                 "circuits after fault"):
        summary.add_column(name)
    phases = Table(title="Phases", title_justify="left", show_edge=False)
    for name in ("scenario", "phase", "requests", "ok", "p50", "p99", "errors", "circuits"):
        phases.add_column(name)
    for r in report.scenarios:
        if r.skipped or r.fault is None or r.baseline is None or r.recovery is None:
            summary.add_row(r.name, "[yellow]skipped[/]")
            continue
        ratio = "" if math.isnan(r.p99_ratio) else f" ({r.p99_ratio:.1f}x)"
        recovery = (f"[green]{r.recovery_time_s:.1f} s[/]" if r.recovery_time_s is not None
                    else "[red]not recovered[/]")
        summary.add_row(r.name, _rate(r.baseline.success_rate), _rate(r.fault.success_rate),
                        _rate(r.recovery.success_rate),
                        f"{_ms(r.baseline.p99_ms)} → {_ms(r.fault.p99_ms)}{ratio}", recovery,
                        _streams(r.fault.streams), escape(_circuits(r.fault.status)))
        for p in r.phases:
            errors = ", ".join(f"{k}: {v}" for k, v in p.errors.items()) or "-"
            phases.add_row(r.name, p.name, str(p.requests), _rate(p.success_rate),
                           _ms(p.p50_ms), _ms(p.p99_ms), escape(errors),
                           escape(_circuits(p.status)))
    console.print(phases)
    console.print(summary)
    for r in report.scenarios:
        for note in ([f"skipped: {r.skipped}"] if r.skipped else []) + r.notes:
            console.print(f"[yellow]note[/] {r.name}: {escape(note)}", highlight=False)
    console.print(f"Recovery: time from removing the faults until the {report.window_s:g} s "
                  "windows are back to the baseline success rate with p99 within "
                  f"{report.latency_factor:g}x baseline, for {report.hold_s:g} s. Latency runs "
                  "from each request's scheduled send time.", highlight=False)


def chaos(
    url: Annotated[str, typer.Argument(
        help="Root URL of the gateway, e.g. http://127.0.0.1:8000 (/v1 optional).")],
    sim: Annotated[list[str], typer.Option(
        "--sim", help="Root URL of a `shipyard sim` that gets the faults, e.g. "
        "http://127.0.0.1:9100; repeatable. Leave a healthy fallback sim out.")],
    model: Annotated[str, typer.Option(help="Model alias to call on the gateway.")] = "demo",
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", "-s", help="Scenario to run, repeatable: errors-30, outage, hangs, "
        "resets, cut-streams, slow-streams, latency-spike, rate-limited, store-down, or all "
        "(the default).")] = None,
    custom: Annotated[list[str] | None, typer.Option(
        help="Your own scenario as NAME=JSON of sim knobs, repeatable, e.g. "
        "'flaky={\"error_rates\": {\"502\": 0.1}}'.")] = None,
    rate: Annotated[float, typer.Option(help="Requests per second, open loop.")] = 20.0,
    stream_share: Annotated[float, typer.Option(
        help="Share of requests that stream (0..1).")] = 0.2,
    baseline: Annotated[float, typer.Option(help="Healthy baseline phase, seconds.")] = 5.0,
    fault: Annotated[float, typer.Option(help="Fault phase, seconds.")] = 10.0,
    recovery: Annotated[float, typer.Option(
        help="Recovery phase after the faults are removed, seconds (longer than your "
        "circuits' open_s).")] = 15.0,
    window: Annotated[float, typer.Option(
        help="Sliding window that must be back to baseline to count as recovered, s.")] = 1.0,
    hold: Annotated[float, typer.Option(
        help="How long the windows must stay back to baseline to count as recovered, s.")
    ] = 3.0,
    latency_factor: Annotated[float, typer.Option(
        help="Recovered means p99 within this factor of the baseline p99.")] = 2.0,
    timeout: Annotated[float, typer.Option(help="Client timeout per request, seconds.")] = 30.0,
    settle: Annotated[float, typer.Option(help="Pause between scenarios, seconds.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for which requests stream.")] = None,
    status: Annotated[bool, typer.Option(
        help="Read GET /v1/admin/status at the end of each phase (circuit states).")] = True,
    api_key: Annotated[str | None, typer.Option(
        help="Gateway key. Prefer --api-key-env so the key stays out of shell history.")] = None,
    api_key_env: Annotated[str, typer.Option(
        help="Environment variable holding the key when --api-key is not given.")
    ] = "SHIPYARD_API_KEY",
    sim_admin_token: Annotated[str | None, typer.Option(
        help="Bearer token of the sims' /_sim admin API (`shipyard sim --admin-token`).")
    ] = None,
    store_down_cmd: Annotated[str | None, typer.Option(
        help="Shell command that takes the gateway's store down (store-down scenario), "
        "e.g. 'docker stop shipyard-pg'.")] = None,
    store_up_cmd: Annotated[str | None, typer.Option(
        help="Shell command that brings the store back, e.g. 'docker start shipyard-pg'.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Write the full report as JSON here.")] = None,
    html_path: Annotated[Path | None, typer.Option(
        "--html", help="Write an offline HTML report with timelines here (needs "
        "pip install 'shipyard\\[report]').")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run named fault scenarios against a running gateway and report what clients saw.

    Each scenario: a healthy baseline, faults set on the sims (PUT /_sim/faults), then
    recovery with the faults removed, under steady open-loop traffic (--stream-share of it
    streaming). Reported per phase: success rate, p50/p99, errors by kind, circuit states;
    per scenario: the recovery time. Exits 3 when a scenario did not recover or a cut stream
    ended with a clean [DONE] (a truncated answer passed off as complete).

    Examples:
      shipyard chaos http://127.0.0.1:8000 --sim http://127.0.0.1:9100
      shipyard chaos http://127.0.0.1:8000 --model demo --sim http://127.0.0.1:9100 \\
          -s errors-30 -s outage -s cut-streams --rate 50 --json chaos.json --html chaos.html
      shipyard chaos http://127.0.0.1:8000 --sim http://127.0.0.1:9100 -s store-down \\
          --store-down-cmd 'docker stop pg' --store-up-cmd 'docker start pg'
      shipyard chaos http://127.0.0.1:8000 --sim http://127.0.0.1:9100 \\
          --custom 'flaky={"error_rates": {"502": 0.1}, "latency": "exp:100"}'
    """
    from shipyard.readiness import chaos as engine

    try:
        chosen = engine.resolve_scenarios(scenario or ([] if custom else ["all"]))
        chosen += [engine.custom_scenario(spec) for spec in custom or []]
        if html_path is not None:
            engine.ensure_html_support()
    except ShipyardError as exc:
        raise fail(exc) from None
    key = api_key or env.get(api_key_env)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[stats]}"), console=err_console, disable=quiet)
    tasks: dict[str, TaskID] = {}

    def on_progress(p: engine.ChaosProgress) -> None:
        if p.scenario not in tasks:
            tasks[p.scenario] = bar.add_task(p.scenario, total=p.duration_s, stats="")
        bar.update(tasks[p.scenario], completed=min(p.elapsed_s, p.duration_s),
                   description=f"{p.scenario} · {p.phase}",
                   stats=f"sent {p.sent:,} · ok {p.ok:,} · errors {p.errors:,}")

    try:
        with bar:
            report = engine.run_scenarios(
                url, key, model, sim, chosen, rate=rate, stream_share=stream_share,
                baseline_s=baseline, fault_s=fault, recovery_s=recovery, window_s=window,
                hold_s=hold, latency_factor=latency_factor, timeout_s=timeout, settle_s=settle,
                status=status, sim_admin_token=sim_admin_token,
                store_down_cmd=store_down_cmd, store_up_cmd=store_up_cmd, seed=seed,
                on_progress=on_progress)
    except ShipyardError as exc:
        raise fail(exc) from None
    _print(report)
    if json_path is not None:
        engine.write_json(report, json_path)
        console.print(f"Wrote {json_path}.")
    if html_path is not None:
        engine.write_html(report, html_path)
        console.print(f"Wrote {html_path}.")
    broken = [r.name for r in report.scenarios
              if not r.skipped and (not r.recovered or r.clean_done_after_cut)]
    if broken:
        console.print(f"[red]Failed:[/] {', '.join(broken)} (not recovered, or a cut stream "
                      "ended with a clean [DONE]).", highlight=False)
        raise typer.Exit(FAILED_EXIT)
