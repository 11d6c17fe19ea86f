"""One batch through validate → clean → key → PII: the part that runs in worker processes.

Everything that needs the whole run (duplicate removal, uniqueness, near-duplicate clustering,
writing) happens in the parent (`shipyard.data.pipeline`); a worker only turns a `RawBatch` into
a `ProcessedBatch`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from shipyard.data.clean import TextCleaner
from shipyard.data.config import PipelineConfig
from shipyard.data.dedup import row_key, signature
from shipyard.data.pii import ColumnProtector
from shipyard.data.sources import RawBatch
from shipyard.data.validate import RowValidator

__all__ = ["QUARANTINE_SCHEMA", "BatchProcessor", "ProcessedBatch", "arrow_type", "quarantine_row"]

_ARROW: dict[str, pa.DataType] = {
    "string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
    "date": pa.date32(), "datetime": pa.timestamp("us", tz="UTC")}

QUARANTINE_SCHEMA = pa.schema([
    ("file", pa.string()), ("line", pa.int64()), ("rule", pa.string()),
    ("column", pa.string()), ("value", pa.string()), ("reason", pa.string()),
    ("row", pa.string())])


def arrow_type(kind: str) -> pa.DataType:
    return _ARROW[kind]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


def quarantine_row(file: str, line: int, rule: str, column: str | None, value: Any,
                   reason: str, row: Any) -> dict[str, Any]:
    return {"file": file, "line": line, "rule": rule, "column": column, "value": _text(value),
            "reason": reason, "row": None if row is None else _text(row)}


@dataclass(slots=True)
class ProcessedBatch:
    """Valid, cleaned, protected rows (Arrow) plus what the parent needs to finish them."""

    batch: pa.RecordBatch
    ids: list[int]
    lines: list[int]
    keys: list[bytes] | None
    signatures: np.ndarray[Any, Any] | None
    unique: dict[str, list[Any]]
    quarantined: list[dict[str, Any]]
    rules: Counter[str] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)
    pii_scanned: int = 0
    pii_skipped: int = 0


class BatchProcessor:
    """Built once per process from the pipeline config."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.validator = RowValidator(config.schema_, nulls=config.source.null_values)
        self.cleaner = TextCleaner(config.clean)
        self.html = frozenset(config.clean.strip_html)
        self.clean_only = None if config.clean.columns is None else frozenset(
            config.clean.columns)
        self.protector = ColumnProtector(config.pii) if config.pii else None
        self.nulls = frozenset(config.source.null_values)
        self.unique = [n for n, c in config.schema_.columns.items() if c.unique]

    def schema(self, columns: list[str]) -> pa.Schema:
        declared = self.config.schema_.columns
        return pa.schema([(c, arrow_type(declared[c].type) if c in declared else pa.string())
                          for c in columns])

    def process(self, raw: RawBatch, columns: list[str], first_id: int) -> ProcessedBatch:
        cfg = self.config
        declared = cfg.schema_.columns
        extras = [c for c in columns if c not in declared]
        out_rows: list[dict[str, Any]] = []
        ids: list[int] = []
        lines: list[int] = []
        quarantined: list[dict[str, Any]] = []
        rules: Counter[str] = Counter()
        protector = self.protector
        pii_cols = list(protector.spec.columns) if protector else []
        before = (Counter(protector.found), protector.scanned,
                  protector.skipped) if protector else None
        # The quarantine sits beside the output: PII is protected there too.
        for bad in raw.bad:
            rule = "decode" if bad.reason.startswith("undecodable") else "malformed"
            shown = protector.protect_text(bad.raw) if protector and bad.raw else bad.raw
            quarantined.append(quarantine_row(raw.file, bad.line, rule, None, shown,
                                              bad.reason, None))
            rules[rule] += 1
        clean, html, only, nulls = self.cleaner.clean, self.html, self.clean_only, self.nulls
        for i, (row, line) in enumerate(zip(raw.rows, raw.lines, strict=True)):
            for key, value in row.items():
                if isinstance(value, str) and (only is None or key in only):
                    row[key] = clean(value, html=key in html)
            if declared:
                typed, problems = self.validator.validate(row)
                if problems:
                    first = problems[0]
                    value = first.value
                    if protector is not None:
                        # Reasons quote values: a PII column's reason names only the rule.
                        reason = "; ".join(
                            f"'{p.column}' failed rule {p.rule}" if p.column in pii_cols
                            else p.reason for p in problems)
                        protector.protect_row(row, pii_cols)
                        if first.column in pii_cols and isinstance(value, str):
                            value = row.get(first.column)
                    else:
                        reason = "; ".join(p.reason for p in problems)
                    quarantined.append(quarantine_row(raw.file, line, first.rule, first.column,
                                                      value, reason, row))
                    rules[first.rule] += 1
                    continue
            else:
                typed = {}
            for name in extras:
                value = row.get(name)
                typed[name] = None if value is None or (
                    isinstance(value, str) and value in nulls) else _text(value)
            out_rows.append(typed)
            ids.append(first_id + i)
            lines.append(line)
        keys = None
        if cfg.dedup.exact:
            key_cols = cfg.dedup.columns or columns
            keys = [row_key([r.get(c) for c in key_cols]) for r in out_rows]
        sigs = None
        near = cfg.dedup.near
        if near is not None:
            sigs = np.stack([signature(str(r.get(near.column) or ""), near) for r in out_rows]) \
                if out_rows else np.zeros((0, near.num_perm), dtype=np.uint64)
        unique = {c: [r.get(c) for r in out_rows] for c in self.unique}
        if protector is not None:
            protect = protector.protect_row
            for r in out_rows:
                protect(r, pii_cols)
        schema = self.schema(columns)
        batch = pa.RecordBatch.from_pylist(out_rows, schema=schema)
        result = ProcessedBatch(batch, ids, lines, keys, sigs, unique, quarantined, rules)
        if self.protector is not None and before is not None:
            result.pii = Counter(self.protector.found) - before[0]
            result.pii_scanned = self.protector.scanned - before[1]
            result.pii_skipped = self.protector.skipped - before[2]
        return result


_WORKER: BatchProcessor | None = None


def init_worker(config: PipelineConfig) -> None:
    """ProcessPoolExecutor initializer: build this process's processor once."""
    global _WORKER
    _WORKER = BatchProcessor(config)


def process_in_worker(raw: RawBatch, columns: list[str], first_id: int) -> ProcessedBatch:
    if _WORKER is None:
        raise RuntimeError("process_in_worker called before init_worker")
    return _WORKER.process(raw, columns, first_id)
