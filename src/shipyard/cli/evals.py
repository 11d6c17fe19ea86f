"""`shipyard eval`: score a version of a service on a dataset against stable, with gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, resolve_config
from shipyard.cli.keys import actor
from shipyard.config import env
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.lifecycle.datasets import EvalDataset

__all__ = ["evaluate"]

_SHOWN = ("rows", "accuracy", "precision", "recall", "f1", "roc_auc", "brier", "ece",
          "exact", "contains", "regex", "json_schema", "similarity", "agree", "grounding",
          "judge", "error_rate", "latency_p50_ms", "latency_p95_ms", "rows_per_s")


def _dataset(engine: Any, service: str, dataset: Path | None, from_feedback_: bool,
             from_escalations_: bool, from_traces_: int | None, label: str,
             features: str | None, decrypt: Any) -> EvalDataset:
    from shipyard.lifecycle.datasets import (
        from_escalations,
        from_feedback,
        from_file,
        from_traces,
    )

    sources = sum([dataset is not None, from_feedback_, from_escalations_,
                   from_traces_ is not None])
    if sources != 1:
        raise fail("Give exactly one dataset: --dataset FILE, --from-feedback, "
                   "--from-escalations or --from-traces N.", code=2)
    if dataset is not None:
        names = [f.strip() for f in features.split(",") if f.strip()] if features else None
        return from_file(dataset, label=label, features=names)
    if from_feedback_:
        return from_feedback(engine, service, decrypt=decrypt)
    if from_escalations_:
        return from_escalations(engine, service)
    return from_traces(engine, service, sample=from_traces_ or 100, decrypt=decrypt)


def evaluate(
    service: Annotated[str, typer.Argument(help="The service to evaluate.")],
    dataset: Annotated[Path | None, typer.Option(
        help="A JSONL, CSV or Parquet file: a 'features' column (or --features) and a "
        "label column for a classifier; 'input' and 'expected' columns for a function.")
    ] = None,
    from_feedback_: Annotated[bool, typer.Option(
        "--from-feedback", help="Labelled feedback on the service's captured traces.")
    ] = False,
    from_escalations_: Annotated[bool, typer.Option(
        "--from-escalations", help="Reviewed escalations (the reviewer's answer).")] = False,
    from_traces_: Annotated[int | None, typer.Option(
        "--from-traces", help="A sample of N captured traces (expected: what was answered).")
    ] = None,
    label: Annotated[str, typer.Option(help="The label column.")] = "label",
    features: Annotated[str | None, typer.Option(
        help="Feature columns, comma-separated, in the model's order.")] = None,
    version: Annotated[str | None, typer.Option(
        help="The candidate: a version number or alias (default: the canary, else the "
        "newest version).")] = None,
    baseline: Annotated[str, typer.Option(
        help="Compare with this version or alias on the same rows; 'none' to skip.")
    ] = "stable",
    metric: Annotated[list[str] | None, typer.Option(
        help="Text metrics (repeatable): exact, contains, regex, json_schema, similarity, "
        "agree, grounding (needs a 'context' column), judge.")] = None,
    schema: Annotated[Path | None, typer.Option(
        help="A JSON Schema file for the json_schema metric.")] = None,
    judge_url: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible base URL (ending in /v1) of the judge model.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="The judge model's name.")] = None,
    judge_key_env: Annotated[str, typer.Option(
        help="Environment variable holding the judge's API key.")] = "SHIPYARD_API_KEY",
    gate: Annotated[list[str] | None, typer.Option(
        help="A threshold (repeatable): accuracy>=0.9, f1>=stable-0.01, ece<=0.05. A failed "
        "gate exits with status 1.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")
                        ] = None,
    html_out: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML report with plots here.")] = None,
    store: Annotated[bool, typer.Option(
        help="Keep the result in the store (shown per version on the dashboard).")] = True,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")
    ] = None,
) -> None:
    """Evaluate a version of a service on a dataset, side by side with stable.

    Exit status: 0 when every gate passes (or none is given), 1 when a gate fails, 2 when
    the evaluation could not run. Example:

    shipyard eval cancer --dataset holdout.csv --gate 'accuracy>=0.9' --html report.html
    """
    from shipyard.lifecycle import registry
    from shipyard.lifecycle.eval_run import judge_client, run_eval, select_version
    from shipyard.lifecycle.evaluate import parse_gate

    _, cfg = resolve_config(config)
    if service not in cfg.services:
        raise fail(f"The config has no service '{service}' (it has "
                   f"{', '.join(sorted(cfg.services)) or 'none'}).", code=2)
    try:
        gates = [parse_gate(g) for g in gate or []]
    except ShipyardError as exc:
        raise fail(exc, code=2) from None
    keys = [k.get_secret_value() for k in cfg.traces.encryption_keys]
    decrypt = None
    if keys:
        from shipyard.security.crypto import PayloadCipher

        decrypt = PayloadCipher(keys).decrypt
    engine = open_store(config, None, migrate=True)
    try:
        data = _dataset(engine, service, dataset, from_feedback_, from_escalations_,
                        from_traces_, label, features, decrypt)
        candidate = select_version(engine, service, version)
        if candidate is None:
            aliases = registry.aliases_of(engine, service).get(service, {})
            versions = registry.list_versions(engine, service)
            if not versions:
                raise fail(f"'{service}' has no versions; start the gateway once or run "
                           "'shipyard versions register'.", code=2)
            candidate = aliases.get("canary", versions[-1].number)
        base = None if baseline == "none" else select_version(engine, service, baseline)
        embed = None
        metrics = metric or ["exact", "contains"]
        if "similarity" in metrics:
            from shipyard.guards.embeddings import Embedder, resolve_model

            embed = Embedder(resolve_model(True)).encode
        judge = None
        if judge_url or judge_model:
            if not (judge_url and judge_model):
                raise fail("An LLM judge needs both --judge-url and --judge-model.", code=2)
            judge = judge_client(judge_url, judge_model, api_key=env.get(judge_key_env))
        result = run_eval(engine, cfg, service, data, candidate=candidate, baseline=base,
                          gates=gates, metrics=metrics,
                          schema=json.loads(schema.read_text()) if schema else None,
                          embed=embed, judge=judge, store=store, actor=actor())
        if html_out is not None:
            from shipyard.lifecycle.report import report_html

            html_out.write_text(report_html(result), encoding="utf-8")
    except ShipyardError as exc:
        raise fail(exc, code=2) from None
    finally:
        engine.dispose()
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    _print(result)
    if html_out is not None:
        console.print(f"Report: {html_out}")
    if result["failures"]:
        raise fail("gate failed: " + "; ".join(result["failures"]), code=1)


def _print(result: dict[str, Any]) -> None:
    candidate, baseline = result["candidate"], result["baseline"]
    table = Table(title=f"{escape(result['target'])} on {escape(result['dataset'])}",
                  show_edge=False)
    table.add_column("metric")
    table.add_column(f"v{result['candidate_version']}")
    if baseline is not None:
        table.add_column(f"v{result['baseline_version']}")
    for name in _SHOWN:
        if candidate.get(name) is None:
            continue
        cells = [_cell(candidate.get(name))]
        if baseline is not None:
            cells.append(_cell(baseline.get(name)))
        table.add_row(name, *cells)
    console.print(table)
    if result["gates"]:
        verdict = "[red]FAILED[/]" if result["failures"] else "[green]passed[/]"
        console.print(f"gates {verdict}: {escape(', '.join(result['gates']))}")


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
