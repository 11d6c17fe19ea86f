"""Compare two dataset versions: schema changes, rows added and removed, distribution shift.

Rows are compared by a hash of their values (read batch by batch). Shift per column is the
population stability index (PSI) over ten quantile bins of the old version for numbers, and over
the old version's top categories (plus "other") for everything else.

>>> diff_versions(old_manifest, new_manifest)["rows"]  # doctest: +SKIP
{'old': 1000, 'new': 1040, 'added': 52, 'removed': 12, 'unchanged': 988}
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shipyard.data.dedup import row_key

__all__ = ["diff_versions", "export_version", "psi"]

_TOP = 20


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of two share vectors (0: same; > 0.25: a large shift)."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, 1e-4), max(a, 1e-4)
        total += (a - e) * math.log(a / e)
    return round(total, 4)


def _keys(path: Path, columns: list[str]) -> Counter[bytes]:
    keys: Counter[bytes] = Counter()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=50_000, columns=columns):
        for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            keys[row_key(row)] += 1
    return keys


def _numeric(column: pa.ChunkedArray) -> bool:
    return bool(pa.types.is_integer(column.type) or pa.types.is_floating(column.type))


def _shift(old: pa.ChunkedArray, new: pa.ChunkedArray) -> dict[str, Any]:
    out: dict[str, Any] = {"null_share_old": round(old.null_count / max(len(old), 1), 4),
                           "null_share_new": round(new.null_count / max(len(new), 1), 4)}
    if _numeric(old) and _numeric(new):
        a = old.drop_null().to_numpy(zero_copy_only=False).astype(float)
        b = new.drop_null().to_numpy(zero_copy_only=False).astype(float)
        if len(a) and len(b):
            edges = np.unique(np.quantile(a, np.linspace(0, 1, 11)))
            edges[0], edges[-1] = -np.inf, np.inf
            ha = [float(x) / len(a) for x in np.histogram(a, edges)[0]]
            hb = [float(x) / len(b) for x in np.histogram(b, edges)[0]]
            out.update({"kind": "numeric", "mean_old": round(float(a.mean()), 6),
                        "mean_new": round(float(b.mean()), 6),
                        "std_old": round(float(a.std()), 6), "std_new": round(float(b.std()), 6),
                        "psi": psi(ha, hb)})
        return out
    a_counts = {str(r["values"]): r["counts"] for r in pc.value_counts(
        old.cast(pa.string())).to_pylist()}
    b_counts = {str(r["values"]): r["counts"] for r in pc.value_counts(
        new.cast(pa.string())).to_pylist()}
    top = [k for k, _ in sorted(a_counts.items(), key=lambda kv: -kv[1])[:_TOP]]
    na, nb = max(sum(a_counts.values()), 1), max(sum(b_counts.values()), 1)
    ea = [a_counts.get(k, 0) / na for k in top] + [1 - sum(a_counts.get(k, 0) for k in top) / na]
    eb = [b_counts.get(k, 0) / nb for k in top] + [1 - sum(b_counts.get(k, 0) for k in top) / nb]
    out.update({"kind": "categorical", "distinct_old": len(a_counts),
                "distinct_new": len(b_counts), "psi": psi(ea, eb),
                "new_values": sorted(set(b_counts) - set(a_counts))[:10]})
    return out


def diff_versions(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The difference between two versions, given their registry records (with `manifest`)."""
    old_m, new_m = old["manifest"], new["manifest"]
    old_schema = {c["name"]: c["type"] for c in old_m["schema"]}
    new_schema = {c["name"]: c["type"] for c in new_m["schema"]}
    schema = {
        "added": [c for c in new_schema if c not in old_schema],
        "removed": [c for c in old_schema if c not in new_schema],
        "type_changed": {c: [old_schema[c], new_schema[c]] for c in old_schema
                         if c in new_schema and old_schema[c] != new_schema[c]},
    }
    old_file = Path(old_m["path"]) / old_m["files"]["data"]
    new_file = Path(new_m["path"]) / new_m["files"]["data"]
    common = [c for c in old_schema if c in new_schema]
    a, b = _keys(old_file, common), _keys(new_file, common)
    removed = sum((a - b).values())
    added = sum((b - a).values())
    rows = {"old": sum(a.values()), "new": sum(b.values()), "added": added, "removed": removed,
            "unchanged": sum((a & b).values())}
    shift: dict[str, Any] = {}
    if common:
        ta = pq.read_table(old_file, columns=common)
        tb = pq.read_table(new_file, columns=common)
        for c in common:
            shift[c] = _shift(ta[c], tb[c])
    return {"old": {"id": old["id"], "name": old["name"], "version": old["version"]},
            "new": {"id": new["id"], "name": new["name"], "version": new["version"]},
            "schema": schema, "rows": rows, "shift": shift}


def export_version(source: Path, output: Path, fmt: str) -> int:
    """Copy a version's Parquet rows to `output` as parquet, csv or jsonl; returns the row count.

    Streams batch by batch, so any size exports in flat memory.
    """
    parquet = pq.ParquetFile(source)
    count = 0
    if fmt == "parquet":
        with pq.ParquetWriter(output, parquet.schema_arrow) as writer:
            for batch in parquet.iter_batches(batch_size=50_000):
                writer.write_batch(batch)
                count += batch.num_rows
        return count
    if fmt == "csv":
        with pacsv.CSVWriter(output, parquet.schema_arrow) as csv_writer:
            for batch in parquet.iter_batches(batch_size=50_000):
                csv_writer.write_batch(batch)
                count += batch.num_rows
        return count
    with output.open("wb") as out:
        for batch in parquet.iter_batches(batch_size=50_000):
            out.write(b"".join(orjson.dumps(r, default=str, option=orjson.OPT_UTC_Z) + b"\n"
                               for r in batch.to_pylist()))
            count += batch.num_rows
    return count
