"""One batch through clean → validate → key → PII: the part that runs in worker processes.

Column by column on Arrow arrays (`shipyard.data.columnar`): the row-at-a-time code runs only on
the values and rows Arrow cannot vouch for, so results are the same as row by row.

Everything that needs the whole run (duplicate removal, uniqueness, near-duplicate clustering,
writing) happens in the parent (`shipyard.data.pipeline`); a worker only turns a `RawBatch` into
a `ProcessedBatch`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shipyard.data.clean import TextCleaner
from shipyard.data.columnar import clean_column, string_array, validate_columns
from shipyard.data.config import PipelineConfig
from shipyard.data.dedup import column_keys, signature
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

    def _clean_row(self, row: dict[str, Any]) -> dict[str, Any]:
        clean, html, only = self.cleaner.clean, self.html, self.clean_only
        return {key: clean(value, html=key in html)
                if isinstance(value, str) and (only is None or key in only) else value
                for key, value in row.items()}

    def process(self, raw: RawBatch, columns: list[str], first_id: int) -> ProcessedBatch:
        """Validate, clean, key and protect one batch, column by column (see `columnar`)."""
        cfg = self.config
        declared = cfg.schema_.columns
        extras = [c for c in columns if c not in declared]
        n = len(raw.rows)
        quarantined: list[dict[str, Any]] = []
        rules: Counter[str] = Counter()
        protector = self.protector
        pii_cols = list(protector.spec.columns) if protector else []
        pii_any = set(pii_cols) | set(protector.spec.value_columns) if protector else set()
        before = (Counter(protector.found), protector.scanned,
                  protector.skipped) if protector else None
        # The quarantine sits beside the output: PII is protected there too.
        for bad in raw.bad:
            rule = "decode" if bad.reason.startswith("undecodable") else "malformed"
            shown = protector.protect_text(bad.raw) if protector and bad.raw else bad.raw
            quarantined.append(quarantine_row(raw.file, bad.line, rule, None, shown,
                                              bad.reason, None))
            rules[rule] += 1
        # The input columns the output needs, cleaned: Arrow finds the values that need it.
        sources = [spec.source or name for name, spec in declared.items()] + extras
        values: dict[str, list[Any]] = {}
        arrays: dict[str, pa.Array | None] = {}
        html, only = self.html, self.clean_only
        for name in dict.fromkeys(sources):
            column = raw.column(name)
            array = string_array(column)
            if only is None or name in only:
                clean = partial(self.cleaner.clean, html=name in html)
                column, array = clean_column(column, array, clean, html=name in html)
            values[name], arrays[name] = column, array
        typed: dict[str, pa.Array] = {}
        reject: set[int] = set()
        if declared:
            typed, suspects = validate_columns(self.validator, values, arrays, n)
            for i in suspects:
                row = self._clean_row(raw.row(i))
                _, problems = self.validator.validate(row)
                if not problems:
                    continue
                reject.add(i)
                first = problems[0]
                value = first.value
                if protector is not None:
                    # Reasons quote values: a PII column's reason names only the rule.
                    reason = "; ".join(
                        f"'{p.column}' failed rule {p.rule}" if p.column in pii_any
                        else p.reason for p in problems)
                    protector.protect_row(row, pii_cols)
                    if first.column in pii_any and isinstance(value, str):
                        value = row.get(first.column)
                else:
                    reason = "; ".join(p.reason for p in problems)
                quarantined.append(quarantine_row(raw.file, raw.lines[i], first.rule,
                                                  first.column, value, reason, row))
                rules[first.rule] += 1
        for name in extras:
            typed[name] = self._extra(values[name], arrays[name])
        keep = [i for i in range(n) if i not in reject] if reject else None
        mask = None if keep is None else pa.array([i not in reject for i in range(n)])
        out = {c: (typed[c] if mask is None else typed[c].filter(mask)) for c in columns}
        ids = [first_id + i for i in (keep if keep is not None else range(n))]
        lines = raw.lines if keep is None else [raw.lines[i] for i in keep]
        rows_out = len(ids)
        keys = None
        if cfg.dedup.exact:
            keys = column_keys([out[c] for c in (cfg.dedup.columns or columns)]) \
                if rows_out else []
        sigs = None
        near = cfg.dedup.near
        if near is not None:
            texts = out[near.column].to_pylist() if near.column in out else [None] * rows_out
            sigs = np.stack([signature(str(t or ""), near) for t in texts]) if rows_out \
                else np.zeros((0, near.num_perm), dtype=np.uint64)
        unique = {c: out[c].to_pylist() for c in self.unique}
        if protector is not None and rows_out:
            names = [c for c in (*pii_cols, *protector.spec.value_columns) if c in out]
            lists = {c: out[c].to_pylist() for c in names}
            protector.protect_columns(lists, {c: out[c] for c in names})
            for c in names:
                out[c] = pa.array(lists[c], type=out[c].type)
        schema = self.schema(columns)
        batch = pa.RecordBatch.from_arrays([out[c].cast(schema.field(c).type) for c in columns],
                                           schema=schema)
        result = ProcessedBatch(batch, ids, lines, keys, sigs, unique, quarantined, rules)
        if self.protector is not None and before is not None:
            result.pii = Counter(self.protector.found) - before[0]
            result.pii_scanned = self.protector.scanned - before[1]
            result.pii_skipped = self.protector.skipped - before[2]
        return result

    def _extra(self, column: list[Any], array: pa.Array | None) -> pa.Array:
        """An undeclared column kept as text: null markers become null."""
        nulls = self.nulls
        if array is not None:
            null = pc.fill_null(pc.is_in(array, value_set=pa.array(sorted(nulls),
                                                                   type=pa.string())), False)
            return pc.if_else(null, pa.scalar(None, pa.string()), array)
        return pa.array([None if v is None or (isinstance(v, str) and v in nulls) else _text(v)
                         for v in column], type=pa.string())


_WORKER: BatchProcessor | None = None


def init_worker(config: PipelineConfig) -> None:
    """ProcessPoolExecutor initializer: build this process's processor once."""
    global _WORKER
    _WORKER = BatchProcessor(config)


def process_in_worker(raw: RawBatch, columns: list[str], first_id: int) -> ProcessedBatch:
    if _WORKER is None:
        raise RuntimeError("process_in_worker called before init_worker")
    return _WORKER.process(raw, columns, first_id)
