"""`shipyard data run|list|show|diff|export`: the data pipeline and its versioned datasets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shipyard.cli.common import config_path, console, err_console, fail, open_store
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from sqlalchemy import Engine

app = typer.Typer(help="Run data pipelines and inspect versioned datasets (needs the `data` "
                       "extra: pip install 'shipyard\\[data]').", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml whose store.url registers datasets (default: "
                           "$SHIPYARD_CONFIG or ./shipyard.yaml; without one, "
                           "sqlite:///.shipyard/shipyard.db).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Use this store instead of the config's store.url.")]
_DEFAULT_STORE = "sqlite:///.shipyard/shipyard.db"


def _data() -> Any:
    try:
        import shipyard.data as data
    except ModuleNotFoundError as exc:
        raise fail(f"The data pipeline needs the '{exc.name}' package; run: "
                   "pip install 'shipyard[data]'") from None
    return data


def _store(config: Path | None, store_url: str | None) -> Engine:
    if store_url is None and config is None and not config_path(None).exists():
        store_url = _DEFAULT_STORE
    try:
        return open_store(config, store_url, migrate=True)
    except ShipyardError as exc:
        raise fail(exc) from None


def _json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z,
                                         default=str) + b"\n")


def _summary(report: dict[str, Any]) -> None:
    rows = report["rows"]
    console.print(f"[bold]{report['name']}[/]: {rows['in']:,} rows in = {rows['out']:,} out + "
                  f"{rows['quarantined']:,} quarantined + {rows['duplicates_removed']:,} "
                  f"duplicates removed ({report['seconds']:.1f} s, "
                  f"{report['rows_per_s']:,.0f} rows/s)", highlight=False)
    if report["quarantine_by_rule"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in report["quarantine_by_rule"].items())
        console.print(f"quarantined by rule: {reasons}", highlight=False)
    for f in report["source"].get("files", []):
        if f.get("encoding"):
            console.print(f"{f['path']}: encoding {f['encoding']}"
                          f"{' (BOM)' if f['bom'] else ''}", highlight=False)
    if report["pii"]:
        found = ", ".join(f"{k} {v:,}" for k, v in report["pii"]["findings"].items()) or "none"
        console.print(f"PII ({report['pii']['mode']}): {found}", highlight=False)
    if report["near_duplicates"]:
        console.print(f"near-duplicates: {report['near_duplicates']:,} rows in "
                      f"{len(report['near_duplicate_clusters']):,} clusters", highlight=False)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if report["dry_run"]:
        console.print("dry run: nothing written.")
    else:
        console.print(f"version {report['version']} written to {report['path']}",
                      highlight=False)


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file.")],
    dry_run: Annotated[bool, typer.Option("--dry-run",
                       help="Validate and report; write no dataset, quarantine or store row.")
                       ] = False,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes for validate/clean/PII (default: the pipeline's workers; "
             "with --engine ray: Ray actors, default one per free CPU of the cluster).")
                       ] = None,
    engine: Annotated[str, typer.Option(
        help="Where batches are processed: local (this machine's processes) or ray (actors "
             "on the Ray cluster of the config's ray: section, or --ray-address).")
                      ] = "local",
    ray_address: Annotated[str | None, typer.Option(
        help="engine ray: the cluster (auto, HOST:PORT, ray://HOST:10001 or local); "
             "default: the config's ray.address, else auto (RAY_ADDRESS).")] = None,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")
                       ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with rows/s.")] = True,
) -> None:
    """Run a pipeline: read, validate, quarantine, clean, de-duplicate, protect PII, report
    bias, and write a new dataset version (Parquet + manifest) registered in the store.

    Exits 0 when the run completes (quarantined rows are not an error; see the report).
    """
    data = _data()
    if engine not in ("local", "ray"):
        raise fail(f"--engine is '{engine}'; use local or ray.")
    try:
        cfg = data.load_pipeline(pipeline)
        runner = _ray_runner(config, ray_address, workers) if engine == "ray" else None
    except ShipyardError as exc:
        raise fail(exc) from None
    store = None if dry_run else _store(config, store_url)
    show = progress and not as_json and sys.stderr.isatty()
    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=None),
                   TextColumn("{task.completed:,.0f} rows"),
                   TextColumn("{task.fields[rate]:,.0f} rows/s"), TimeElapsedColumn(),
                   transient=True, disable=not show, console=err_console)
    try:
        with bar:
            task = bar.add_task(cfg.name, total=None, rate=0.0)
            started = [0.0]

            def tick(rows: int) -> None:
                elapsed = bar.get_time() - (started[0] or bar.get_time())
                if not started[0]:
                    started[0] = bar.get_time()
                bar.update(task, completed=rows, rate=rows / elapsed if elapsed > 0 else 0.0)

            report = data.run_pipeline(cfg, store=store, dry_run=dry_run, progress=tick,
                                       workers=workers, runner=runner, engine=engine)
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        if store is not None:
            store.dispose()
        if runner is not None:
            from shipyard.engines.ray.cluster import shutdown

            shutdown()
    if as_json:
        _json(report.to_dict())
    else:
        _summary(report.to_dict())


def _ray_runner(config: Path | None, address: str | None, workers: int | None) -> Any:
    """The Ray engine's batch runner: the cluster of the config's `ray:` section (when a
    config is given or found), with --ray-address over it."""
    from shipyard.config.engines import RayConfig
    from shipyard.config.loader import load_config

    try:
        from shipyard.engines.ray.data import RayBatchRunner
    except ModuleNotFoundError as exc:
        raise fail(f"--engine ray needs the '{exc.name}' package; run: "
                   "pip install 'shipyard[ray]'") from None
    found = config_path(config)
    ray = (load_config(found, secrets=False).ray if (config is not None or found.exists())
           else RayConfig())
    if address is not None:
        try:
            ray = ray.model_copy(update={"address": RayConfig(address=address).address})
        except ValueError as exc:
            raise fail(f"--ray-address is '{address}', which is not a Ray address; use auto, "
                       "local, HOST:PORT or ray://HOST:10001.") from exc
    return RayBatchRunner(ray, workers=workers)


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(help="Only versions of this dataset.")] = None,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many versions.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List dataset versions (newest version of each name first)."""
    rows = _data().DatasetRegistry(_store(config, store_url)).list(name, limit=limit)
    if as_json:
        _json([{k: v for k, v in r.items() if k != "manifest"} for r in rows])
        return
    if not rows:
        console.print("No datasets yet; create one with 'shipyard data run pipeline.yaml'.")
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("name", "version", "created", "rows out", "quarantined", "dups removed",
                "content hash", "id"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["version"]), r["created_at"].strftime("%Y-%m-%d %H:%M"),
                      f"{r['rows_out']:,}", f"{r['rows_quarantined']:,}",
                      f"{r['duplicates_removed']:,}", r["content_hash"][:12], r["id"][:12])
    console.print(table)


def _get(engine: Engine, ref: str) -> dict[str, Any]:
    try:
        record: dict[str, Any] = _data().DatasetRegistry(engine).get(ref)
    except ShipyardError as exc:
        raise fail(exc) from None
    return record


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="name (latest), name@VERSION or a version id.")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Show one version's manifest (content hash, schema, row counts, source, parent)."""
    _json(_get(_store(config, store_url), ref)["manifest"])


@app.command()
def diff(
    old: Annotated[str, typer.Argument(help="The older version (name@VERSION or id).")],
    new: Annotated[str, typer.Argument(help="The newer version (name@VERSION or id).")],
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare two versions: schema changes, rows added/removed, distribution shift (PSI)."""
    engine = _store(config, store_url)
    result = _data().diff_versions(_get(engine, old), _get(engine, new))
    if as_json:
        _json(result)
        return
    a, b = result["old"], result["new"]
    console.print(f"[bold]{a['name']} v{a['version']} → {b['name']} v{b['version']}[/]",
                  highlight=False)
    schema = result["schema"]
    console.print(f"schema: added {schema['added'] or '-'}, removed {schema['removed'] or '-'}, "
                  f"type changed {schema['type_changed'] or '-'}", highlight=False)
    rows = result["rows"]
    console.print(f"rows: {rows['old']:,} → {rows['new']:,} (+{rows['added']:,} added, "
                  f"-{rows['removed']:,} removed, {rows['unchanged']:,} unchanged)",
                  highlight=False)
    table = Table(show_edge=False, pad_edge=False)
    for col in ("column", "kind", "PSI", "nulls old → new", "detail"):
        table.add_column(col)
    for name, s in result["shift"].items():
        detail = (f"mean {s['mean_old']:.4g} → {s['mean_new']:.4g}" if s.get("kind") == "numeric"
                  else f"distinct {s.get('distinct_old', 0)} → {s.get('distinct_new', 0)}")
        psi = s.get("psi")
        style = "" if psi is None else "red" if psi > 0.25 else "yellow" if psi > 0.1 else ""
        shown = "-" if psi is None else f"[{style}]{psi:.3f}[/]" if style else f"{psi:.3f}"
        table.add_row(name, s.get("kind", "-"), shown,
                      f"{s['null_share_old']:.1%} → {s['null_share_new']:.1%}", detail)
    console.print(table)


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="name (latest), name@VERSION or a version id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet, csv or jsonl.")] = "parquet",
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Export a version's rows to a Parquet, CSV or JSON Lines file."""
    if fmt not in ("parquet", "csv", "jsonl"):
        raise fail(f"--format is '{fmt}'; use parquet, csv or jsonl.")
    record = _get(_store(config, store_url), ref)
    manifest = record["manifest"]
    source = Path(manifest["path"]) / manifest["files"]["data"]
    if not source.is_file():
        raise fail(f"Version {record['name']}@{record['version']} lists '{source}', which no "
                   "longer exists; run the pipeline again to recreate it.")
    rows = _data().export_version(source, output, fmt)
    console.print(f"Exported {rows:,} rows of {record['name']}@{record['version']} to {output}.",
                  highlight=False)
