"""`shipyard drift check|profile|history`: data drift over traces or over data files.

numpy and scipy come with the `monitor` extra; they are imported when a command runs, so the
rest of the CLI works without them.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, parse_since, resolve_config
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.monitor.drift.detect import DriftReport

__all__ = ["app", "read_table"]

app = typer.Typer(help="Data drift: compare a reference window with a current one.",
                  no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Use this store instead of the config's store.url.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
HtmlOpt = Annotated[Path | None, typer.Option(
    "--html", help="Also write a self-contained HTML report here (needs shipyard[report]).")]


def _require_monitor() -> None:
    try:
        import numpy  # noqa: F401
        import scipy  # noqa: F401
    except ImportError:
        raise fail("Drift needs numpy and scipy; install them with "
                   "pip install 'shipyard[monitor]'.") from None


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def read_table(path: Path) -> dict[str, list[Any]]:
    """Columns of a CSV (header row) or JSON Lines file; numbers are parsed, blanks are None."""
    if not path.exists():
        raise fail(f"The file '{path}' does not exist; pass a CSV or JSON Lines file.")
    columns: dict[str, list[Any]] = {}
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        records = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        names = list(dict.fromkeys(k for r in records for k in r))
        return {n: [r.get(n) for r in records] for n in names}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            for name, value in row.items():
                columns.setdefault(name, []).append(None if value in ("", None) else value)
    for name, values in columns.items():
        parsed = [None if v is None else _number(v) for v in values]
        if all(v is None or isinstance(v, int | float) for v in parsed):
            columns[name] = parsed
    return columns


def _print_report(report: DriftReport, title: str) -> None:
    table = Table(title=title, show_edge=False)
    for column in ("column", "kind", "test", "score", "threshold", "drift", "ref rows",
                   "cur rows", "note"):
        table.add_column(column, justify="right" if column in (
            "score", "threshold", "ref rows", "cur rows") else "left")
    for c in report.columns:
        verdict = "[red]drift[/]" if c.drifted else ("-" if c.method == "skipped"
                                                     else "[green]ok[/]")
        table.add_row(c.column, c.kind, c.method,
                      "" if c.score is None else f"{c.score:.4g}",
                      "" if c.threshold is None else f"{c.threshold:g}", verdict,
                      f"{c.reference_rows:,}", f"{c.current_rows:,}",
                      c.note + (" (sketch)" if c.approximate else ""))
    console.print(table)
    style = "red" if report.dataset_drift else "green"
    console.print(f"[{style}]{len(report.drifted_columns)} of {len(report.tested)} columns "
                  f"drifted[/] (share {report.share:.2f}; dataset drift at ≥ "
                  f"{report.drift_share}).", highlight=False)


def _write_html(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    console.print(f"Wrote {path}.")


def _html_module() -> Any:
    try:
        from shipyard.monitor.drift import report
    except ImportError:
        raise fail("--html needs plotly; install it with pip install 'shipyard[report]'."
                   ) from None
    return report


@app.command()
def check(
    name: Annotated[str | None, typer.Argument(
        help="A check under drift.checks in the config (default: every check).")] = None,
    reference: Annotated[Path | None, typer.Option(
        help="Reference data file (CSV or JSON Lines) instead of traces.")] = None,
    current: Annotated[Path | None, typer.Option(
        help="Current data file (CSV or JSON Lines); goes with --reference.")] = None,
    column: Annotated[list[str] | None, typer.Option(
        "--column", help="Only these columns (repeatable).")] = None,
    store: Annotated[bool, typer.Option(help="Record the result in the store.")] = True,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    as_json: JsonOpt = False,
    html_path: HtmlOpt = None,
) -> None:
    """Run drift checks now and print each column's test, score and verdict.

    Examples: shipyard drift check support --config shipyard.yaml |
    shipyard drift check --reference last_month.csv --current today.csv --json
    """
    _require_monitor()
    from shipyard.config.drift import DriftCheckConfig
    from shipyard.monitor.drift.checks import run_check
    from shipyard.monitor.drift.detect import detect_drift

    reports: dict[str, DriftReport] = {}
    skipped: dict[str, str] = {}  # check name -> why it did not run
    try:
        if reference is not None or current is not None:
            if reference is None or current is None:
                raise fail("--reference and --current go together; pass both data files.")
            reports[current.name] = detect_drift(read_table(reference), read_table(current),
                                                 columns=column)
        else:
            _, cfg = resolve_config(config, secrets=False)
            checks = cfg.drift.checks
            if name is not None and name not in checks:
                known = ", ".join(sorted(checks)) or "none are configured"
                raise fail(f"drift.checks has no check '{name}' (known: {known}); add it to "
                           "the config or pass --reference and --current files.")
            if not checks:
                raise fail("The config has no drift.checks; add one (see docs/drift.md) or "
                           "pass --reference and --current files.")
            engine = open_store(config, store_url, migrate=True)
            for key, spec in checks.items():
                if name is not None and key != name:
                    continue
                if column:
                    spec = DriftCheckConfig(**{**spec.model_dump(), "columns": column})
                outcome = run_check(engine, key, spec, store=store)
                if outcome.report is None:
                    skipped[key] = outcome.skipped or "skipped"
                    if not as_json:  # with --json, stdout is JSON only: it says so there
                        console.print(f"[yellow]{key}: skipped[/] ({outcome.skipped}).",
                                      highlight=False)
                    continue
                reports[key] = outcome.report
    except ShipyardError as exc:
        raise fail(exc) from None
    if as_json:
        shown: dict[str, Any] = {k: r.to_dict() for k, r in reports.items()}
        shown.update({k: {"skipped": why} for k, why in skipped.items()})
        console.print_json(orjson.dumps(shown).decode())
    else:
        for key, report in reports.items():
            _print_report(report, f"Drift: {key}")
    if html_path is not None and reports:
        _write_html(html_path, _html_module().reports_html(reports))


@app.command()
def profile(
    name: Annotated[str, typer.Argument(help="Name to store the profile under (a check's).")],
    data: Annotated[Path | None, typer.Option(
        help="Profile this CSV or JSON Lines file instead of traces.")] = None,
    since: Annotated[str, typer.Option(help="Trace window start: 7d, 12h or an ISO time.")
                     ] = "7d",
    until: Annotated[str | None, typer.Option(help="Trace window end (default: now).")] = None,
    service: Annotated[str | None, typer.Option(help="Only this service or model.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    column: Annotated[list[str] | None, typer.Option(
        "--column", help="Only these columns (repeatable; default: the built-in features).")
    ] = None,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a reference profile (compact per-column sketches) and store it under NAME.

    Example: shipyard drift profile support --since 30d --until 7d --service support
    """
    _require_monitor()
    from shipyard.monitor.drift.features import BUILTIN_FEATURES, TraceWindow, load_features
    from shipyard.monitor.drift.profiles import profile_columns
    from shipyard.monitor.drift.store import save_profile

    engine = open_store(config, store_url, migrate=True)
    start = end = None
    if data is not None:
        table = read_table(data)
        if column:
            table = {c: table[c] for c in column if c in table}
        built = profile_columns(table)
    else:
        start = parse_since(since) or datetime(1970, 1, 1, tzinfo=UTC)
        end = parse_since(until) or datetime.now(UTC)
        window = TraceWindow(start=start, end=end, service=service, tenant_id=tenant)
        features, kinds = load_features(engine, window,
                                        columns=column or list(BUILTIN_FEATURES))
        built = profile_columns(features, kinds=kinds)
    profile_id = save_profile(engine, name, built, tenant_id=tenant or "default",
                              service=service, window_start=start, window_end=end)
    summary = {"id": profile_id, "name": name, "rows": built.rows,
               "columns": {c.name: {"kind": c.kind, "count": c.count, "missing": c.missing,
                                    "distinct": c.distinct} for c in built.columns.values()}}
    if as_json:
        console.print_json(orjson.dumps(summary).decode())
        return
    table_out = Table(title=f"Profile '{name}' ({built.rows:,} rows)", show_edge=False)
    for heading in ("column", "kind", "values", "missing", "distinct"):
        table_out.add_column(heading)
    for c in built.columns.values():
        table_out.add_row(c.name, c.kind, f"{c.count:,}", f"{c.missing:,}", f"{c.distinct:,}")
    console.print(table_out)


@app.command()
def history(
    name: Annotated[str | None, typer.Argument(help="Only this check.")] = None,
    since: Annotated[str, typer.Option(help="Period start: 30d, 12h or an ISO time.")] = "30d",
    limit: Annotated[int, typer.Option(help="Most results to show.")] = 50,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    as_json: JsonOpt = False,
    html_path: HtmlOpt = None,
) -> None:
    """Show stored drift check results over time, newest first.

    Example: shipyard drift history support --since 7d --html drift.html
    """
    _require_monitor()
    from shipyard.monitor.drift.store import drift_history

    engine = open_store(config, store_url, migrate=True)
    start = parse_since(since) or datetime.now(UTC) - timedelta(days=30)
    rows = drift_history(engine, name, since=start, limit=limit, details=as_json)
    if as_json:
        console.print_json(orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode())
    else:
        table = Table(title="Drift history", show_edge=False)
        for heading in ("time", "check", "drifted", "share", "dataset drift", "current rows"):
            table.add_column(heading)
        for r in rows:
            table.add_row(r["at"].strftime("%Y-%m-%d %H:%M:%S"), r["check_name"],
                          f"{r['drifted']}/{r['tested']}", f"{r['share']:.2f}",
                          "[red]yes[/]" if r["dataset_drift"] else "no",
                          f"{r['current_rows']:,}")
        console.print(table)
    if html_path is not None:
        _write_html(html_path, _html_module().history_html(rows))
