"""`shipyard feedback export`: feedback joined with its traces, as a labelled dataset."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from shipyard.cli.common import console, fail, open_store, parse_since, resolve_config
from shipyard.cli.keys import actor
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.security.crypto import PayloadCipher

app = typer.Typer(help="Feedback on traced requests.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Read this store instead of the config's store.url (encrypted "
                          "payloads then stay redacted).")]

COLUMNS = ("feedback_id", "trace_id", "tenant", "created_at", "service", "version", "model",
           "status", "score", "label", "comment", "by", "request", "response")


def _record(row: dict[str, Any], cipher: PayloadCipher | None) -> dict[str, Any]:
    from shipyard.security.crypto import redact_encrypted

    def payload(value: str | None) -> str | None:
        if value is None:
            return None
        return cipher.decrypt(value) if cipher is not None else redact_encrypted(value)

    created = row["created_at"]
    return {"feedback_id": row["id"], "trace_id": row["trace_id"], "tenant": row["tenant_id"],
            "created_at": created.isoformat().replace("+00:00", "Z"),
            "service": row["service"], "version": row["version"], "model": row["model_alias"],
            "status": row["status"], "score": row["score"], "label": row["label"],
            "comment": row["comment"], "by": row["author"],
            "request": payload(row["request_body"]), "response": payload(row["response_body"])}


def _cipher(config: Path | None, store_url: str | None) -> PayloadCipher | None:
    from shipyard.security.crypto import PayloadCipher

    if store_url:
        return None
    _, cfg = resolve_config(config)
    keys = [k.get_secret_value() for k in cfg.traces.encryption_keys]
    return PayloadCipher(keys) if keys else None


@app.command()
def export(
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o",
                      help="Write to this file instead of stdout.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: all).")] = None,
    service: Annotated[str | None, typer.Option(help="Only this service or model alias.")] = None,
    since: Annotated[str | None, typer.Option(help="Only since: 15m, 2h, 7d or ISO time.")] = None,
) -> None:
    """Export feedback as a labelled dataset, oldest first: one row per feedback with the
    trace's request and response when they were captured (`capture: full`).

    Recorded in the audit log. Example: shipyard feedback export --format csv -o labels.csv
    """
    from shipyard.security.audit import AuditLog
    from shipyard.security.roles import PLATFORM_TENANT
    from shipyard.store.feedback import iter_dataset

    if fmt not in ("jsonl", "csv"):
        raise fail(f"--format is '{fmt}'; choose jsonl or csv.")
    engine = open_store(config, store_url, migrate=True)  # migrated: the export is audited
    try:
        cipher = _cipher(config, store_url)
    except ShipyardError as exc:
        raise fail(exc) from None
    rows = iter_dataset(engine, tenant_id=tenant, since=parse_since(since), service=service)
    target = str(output.resolve()) if output else "stdout"
    count = 0
    with (output.open("wb") if output else open(sys.stdout.fileno(), "wb",
                                                  closefd=False)) as out:
        if fmt == "csv":
            text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
            writer = csv.DictWriter(text, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(_record(row, cipher))
                count += 1
            text.detach()
        else:
            for row in rows:
                out.write(orjson.dumps(_record(row, cipher)) + b"\n")
                count += 1
    try:
        AuditLog(engine).append(tenant_id=tenant or PLATFORM_TENANT, actor=actor(),
                                action="feedback.export", target=target,
                                details={"format": fmt, "rows": count, "service": service,
                                         "since": since})
    except Exception as exc:  # the export happened; say so, and that it was not recorded
        raise fail(f"Exported {count} rows to {target}, but the export could not be recorded "
                   f"in the audit log ({type(exc).__name__}); record it by hand.") from None
    if output:
        console.print(f"Exported {count} feedback rows to {output}.")
