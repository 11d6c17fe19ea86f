"""`shipyard usage`: spend, tokens and requests by tenant, key, service or model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, parse_since
from shipyard.cli.keys import ConfigOpt, StoreOpt

__all__ = ["usage"]


def usage(
    by: Annotated[str, typer.Option(help="Group by tenant, key, service or model.")] = "tenant",
    since: Annotated[str, typer.Option(help="Period start: 30d, 12h or an ISO time.")] = "30d",
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Report spend (USD), tokens, requests and errors over a period.

    Example: shipyard usage --by model --since 7d --config shipyard.yaml
    """
    from shipyard.store.traces import usage as usage_query

    start = parse_since(since) or datetime(1970, 1, 1, tzinfo=UTC)
    try:
        rows = usage_query(open_store(config, store_url), by=by, since=start, tenant_id=tenant)
    except ValueError as exc:
        raise fail(f"--by is '{by}': {exc}.") from None
    if as_json:
        console.print_json(orjson.dumps(rows).decode())
        return
    table = Table(title=f"Usage by {by} since {start:%Y-%m-%d %H:%M} UTC", show_edge=False)
    for column in (by, "requests", "errors", "prompt tokens", "completion tokens", "cost USD"):
        table.add_column(column, justify="left" if column == by else "right")
    for row in rows:
        table.add_row(str(row["group"] or "-"), f"{row['requests']:,}", f"{row['errors']:,}",
                      f"{row['prompt_tokens'] or 0:,}", f"{row['completion_tokens'] or 0:,}",
                      f"{row['cost_usd'] or 0:.4f}")
    console.print(table)


