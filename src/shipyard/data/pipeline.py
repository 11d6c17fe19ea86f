"""Run a pipeline: stream the source, process batches (in worker processes when asked), remove
duplicates, quarantine failures, write a versioned Parquet dataset and account for every row.

    rows_in = rows_out + rows_quarantined + duplicates_removed

is checked at the end of every run (`RunReport.check`).

>>> report = run_pipeline(load_pipeline("pipeline.yaml"), store=engine)  # doctest: +SKIP
>>> report.rows_out  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine

from shipyard.data.bias import BiasAccumulator, render_bias_html
from shipyard.data.config import PipelineConfig, config_hash
from shipyard.data.dedup import ExactDeduper, NearDuplicates
from shipyard.data.process import (
    QUARANTINE_SCHEMA,
    BatchProcessor,
    ProcessedBatch,
    init_worker,
    process_in_worker,
    quarantine_row,
)
from shipyard.data.registry import DatasetRegistry
from shipyard.data.sources import RawBatch, SourceInfo, iter_source
from shipyard.errors import ShipyardError

__all__ = ["AccountingError", "BatchJob", "BatchRunner", "InProcesses", "RunReport",
           "in_process", "run_pipeline"]

Progress = Callable[[int], None]


class AccountingError(ShipyardError):
    """The row counts of a run do not add up (a bug: please report it)."""


@dataclass
class RunReport:
    """What a run did with every row."""

    name: str
    dry_run: bool
    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    duplicates_removed: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    near_duplicates_removed: int = 0
    quarantine_by_rule: Counter[str] = field(default_factory=Counter)
    nulls: Counter[str] = field(default_factory=Counter)
    source: dict[str, Any] = field(default_factory=dict)
    pii: dict[str, Any] | None = None
    duplicate_clusters: list[dict[str, Any]] = field(default_factory=list)
    near_duplicate_clusters: list[list[int]] = field(default_factory=list)
    bias: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    version: int | None = None
    dataset_id: str | None = None
    path: str | None = None
    content_hash: str | None = None
    config_hash: str = ""
    columns: list[dict[str, str]] = field(default_factory=list)
    engine: str = "local"  # where batches were processed: local (processes) or ray

    def check(self) -> None:
        """Raise AccountingError unless rows_in = rows_out + quarantined + duplicates removed."""
        total = self.rows_out + self.rows_quarantined + self.duplicates_removed
        if total != self.rows_in:
            raise AccountingError(
                f"Pipeline '{self.name}' read {self.rows_in} rows but accounted for {total} "
                f"({self.rows_out} out, {self.rows_quarantined} quarantined, "
                f"{self.duplicates_removed} duplicates removed); this is a bug, please report it.")

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "dry_run": self.dry_run, "engine": self.engine,
            "version": self.version,
            "dataset_id": self.dataset_id, "path": self.path, "content_hash": self.content_hash,
            "config_hash": self.config_hash,
            "rows": {"in": self.rows_in, "out": self.rows_out,
                     "quarantined": self.rows_quarantined,
                     "duplicates_removed": self.duplicates_removed},
            "exact_duplicates": self.exact_duplicates, "near_duplicates": self.near_duplicates,
            "near_duplicates_removed": self.near_duplicates_removed,
            "quarantine_by_rule": dict(sorted(self.quarantine_by_rule.items())),
            "nulls": dict(sorted(self.nulls.items())), "columns": self.columns,
            "source": self.source, "pii": self.pii,
            "duplicate_clusters": self.duplicate_clusters,
            "near_duplicate_clusters": self.near_duplicate_clusters,
            "bias_warnings": (self.bias or {}).get("warnings", []),
            "warnings": self.warnings, "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s, 1)}


class _Quarantine:
    """Writes quarantined rows beside the output (Parquet or JSONL), created on first use."""

    def __init__(self, path: Path | None, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._parquet: pq.ParquetWriter | None = None
        self._jsonl: IO[bytes] | None = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows or self.path is None:
            return
        if self.fmt == "jsonl":
            if self._jsonl is None:
                self._jsonl = self.path.open("wb")
            self._jsonl.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
            return
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, QUARANTINE_SCHEMA)
        self._parquet.write_batch(pa.RecordBatch.from_pylist(rows, schema=QUARANTINE_SCHEMA))

    def close(self) -> str | None:
        if self._parquet is not None:
            self._parquet.close()
        if self._jsonl is not None:
            self._jsonl.close()
        return None if self.path is None or not self.path.exists() else self.path.name


def _output_columns(config: PipelineConfig, raw: RawBatch) -> list[str]:
    declared = list(config.schema_.columns)
    if declared and config.schema_.extra_columns == "drop":
        return declared
    sources = {c.source or n for n, c in config.schema_.columns.items()}
    return declared + [c for c in raw.column_names() if c not in sources and c not in declared]


# One batch to process: the raw rows, the output columns and the id of its first row.
BatchJob = tuple[RawBatch, list[str], int]


class BatchRunner(Protocol):
    """Where batches are processed (an engine): takes the run's jobs in input order and
    yields their processed batches in the same order. Built in: this process (`workers`
    1), spawned worker processes (`workers` N), and Ray actors across a cluster
    (`shipyard.engines.ray.data`). Pulling jobs lazily keeps memory flat."""

    def __call__(self, config: PipelineConfig,
                 jobs: Iterator[BatchJob]) -> Iterator[ProcessedBatch]: ...


def in_process(config: PipelineConfig, jobs: Iterator[BatchJob]) -> Iterator[ProcessedBatch]:
    processor = BatchProcessor(config)
    for raw, columns, first_id in jobs:
        yield processor.process(raw, columns, first_id)


@dataclass(frozen=True)
class InProcesses:
    """Spawned worker processes, at most two batches each in flight."""

    workers: int

    def __call__(self, config: PipelineConfig,
                 jobs: Iterator[BatchJob]) -> Iterator[ProcessedBatch]:
        # spawn, not fork: the parent may run a progress thread, and forked threads deadlock.
        context = multiprocessing.get_context("spawn")
        pending: deque[Future[ProcessedBatch]] = deque()
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context,
                                 initializer=init_worker, initargs=(config,)) as pool:
            for raw, columns, first_id in jobs:
                pending.append(pool.submit(process_in_worker, raw, columns, first_id))
                while len(pending) >= self.workers * 2:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def _batches(config: PipelineConfig, info: SourceInfo, workers: int,
             runner: BatchRunner | None = None
             ) -> Iterator[tuple[str, int, ProcessedBatch, list[str]]]:
    """(file, rows read, processed batch, output columns) in input order.

    The output columns are fixed by the first batch that has rows; row ids count from 1 in
    read order, so every engine numbers (and so de-duplicates) the same rows the same way.
    """
    source = iter_source(config.source, base_dir=Path(config.base_dir), info=info)
    meta: deque[tuple[str, int, list[str]]] = deque()

    def jobs() -> Iterator[BatchJob]:
        columns: list[str] | None = None
        first_id = 1
        for raw in source:
            if columns is None and raw.rows:
                columns = _output_columns(config, raw)
            cols = columns or list(config.schema_.columns)
            meta.append((raw.file, raw.size, cols))
            yield raw, cols, first_id
            first_id += raw.size

    run = runner or (in_process if workers <= 1 else InProcesses(workers))
    for done in run(config, jobs()):
        file, size, cols = meta.popleft()
        yield file, size, done, cols


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_pipeline(config: PipelineConfig, *, store: Engine | None = None, dry_run: bool = False,
                 progress: Progress | None = None, workers: int | None = None,
                 runner: BatchRunner | None = None, engine: str = "local") -> RunReport:
    """Run `config` end to end; with `dry_run`, validate and report without writing anything.

    Without `store` the version is written to disk but not registered. `runner` processes
    the batches elsewhere (e.g. on Ray: `shipyard.engines.ray.data.RayBatchRunner`), named
    `engine` in the report; everything that needs the whole run stays here, so the result
    does not depend on where batches ran.
    """
    started = time.perf_counter()
    report = RunReport(name=config.name, dry_run=dry_run, config_hash=config_hash(config),
                       engine=engine)
    info = SourceInfo(format=str(config.source.format))
    registry = DatasetRegistry(store) if store is not None else None
    version = registry.next_version(config.name) if registry else None
    dataset_id = uuid.uuid4().hex
    root = config.resolve(config.output.dir) / config.name
    work: Path | None = None
    if not dry_run:
        work = root / f".tmp-{dataset_id}"
        work.mkdir(parents=True, exist_ok=True)
    q_format = config.output.quarantine
    quarantine = _Quarantine(None if work is None else work / f"quarantine.{q_format}", q_format)
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    exact = ExactDeduper()
    near = NearDuplicates(config.dedup.near) if config.dedup.near else None
    near_drop = config.dedup.near is not None and config.dedup.near.action == "drop"
    unique_seen: dict[str, set[Any]] = {}
    bias = BiasAccumulator(config.bias) if config.bias else None
    pii_found: Counter[str] = Counter()
    pii_scanned = pii_skipped = 0
    workers = workers or config.workers
    try:
        for file, size, done, columns in _batches(config, info, workers, runner):
            report.rows_in += size
            keep = [True] * len(done.ids)
            extra_q: list[dict[str, Any]] = []
            if done.keys is not None:
                for i, (key, row_id) in enumerate(zip(done.keys, done.ids, strict=True)):
                    if exact.seen(key, row_id) is not None:
                        keep[i] = False
            for column, values in done.unique.items():
                seen = unique_seen.setdefault(column, set())
                for i, value in enumerate(values):
                    if not keep[i] or value is None:
                        continue
                    if value in seen:
                        keep[i] = False
                        row = done.batch.slice(i, 1).to_pylist()[0]
                        extra_q.append(quarantine_row(
                            file, done.lines[i], "unique", column, value,
                            f"'{column}' value {value!r} already appeared in an earlier row",
                            row))
                    else:
                        seen.add(value)
            if near is not None and done.signatures is not None:
                for i, row_id in enumerate(done.ids):
                    if keep[i] and near.add(row_id, done.signatures[i]) is not None and near_drop:
                        keep[i] = False
                        report.near_duplicates_removed += 1
            batch = done.batch if all(keep) else done.batch.filter(pa.array(keep))
            quarantined = done.quarantined + extra_q
            report.rows_quarantined += len(quarantined)
            report.quarantine_by_rule.update(done.rules)
            report.quarantine_by_rule["unique"] += len(extra_q)
            report.rows_out += batch.num_rows
            pii_found.update(done.pii)
            pii_scanned += done.pii_scanned
            pii_skipped += done.pii_skipped
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                report.nulls[name] += column.null_count
            if schema is None and (batch.num_rows or columns):
                schema = batch.schema
            if bias is not None:
                bias.add(batch)
            if work is not None:
                quarantine.write(quarantined)
                if batch.num_rows:
                    if writer is None:
                        writer = pq.ParquetWriter(work / "data.parquet", batch.schema)
                    writer.write_batch(batch)
            if progress is not None:
                progress(report.rows_in)
        report.exact_duplicates = exact.removed
        report.near_duplicates = near.matched if near else 0
        report.duplicates_removed = exact.removed + report.near_duplicates_removed
        report.quarantine_by_rule = +report.quarantine_by_rule
        report.duplicate_clusters = exact.clusters()
        report.near_duplicate_clusters = near.clusters() if near else []
        report.source = info.to_dict()
        wanted = {spec.source or name for name, spec in config.schema_.columns.items()}
        for f in info.files:
            report.warnings.extend(f"{Path(f.path).name}: {w}" for w in f.warnings)
            missing = sorted(wanted - set(f.columns)) if f.columns else []
            if missing:
                report.warnings.append(f"{Path(f.path).name}: declared column(s) "
                                       f"{', '.join(missing)} not in the input (read as null)")
        if schema is None:
            schema = BatchProcessor(config).schema(list(config.schema_.columns))
        report.columns = [{"name": f.name, "type": str(f.type)} for f in schema]
        if config.pii is not None:
            report.pii = {"mode": config.pii.mode, "columns": list(config.pii.columns),
                          "texts_scanned": pii_scanned,
                          "texts_skipped_by_prefilter": pii_skipped,
                          "findings": dict(sorted(pii_found.items()))}
        if bias is not None:
            report.bias = bias.report()
            report.warnings.extend(report.bias["warnings"])
        report.check()
        if work is not None:
            if writer is None:
                writer = pq.ParquetWriter(work / "data.parquet", schema)
            writer.close()
            writer = None
            _finish(config, report, quarantine.close(), work, root, registry, version,
                    dataset_id, started)
    except BaseException:
        if writer is not None:
            writer.close()
        quarantine.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - started
    return report


def _finish(config: PipelineConfig, report: RunReport, quarantine_file: str | None, work: Path,
            root: Path, registry: DatasetRegistry | None, version: int | None, dataset_id: str,
            started: float) -> None:
    parent = registry.latest(config.name) if registry else None
    if version is None:  # not registered: number versions by the folders on disk
        existing = [int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit()]
        version = max(existing, default=0) + 1
    final = root / f"v{version}"
    if final.exists():  # a folder left by an unregistered run: never overwrite data
        final = root / f"v{version}-{dataset_id[:8]}"
    report.version, report.dataset_id = version, dataset_id
    report.path = str(final.resolve())
    report.content_hash = _sha256(work / "data.parquet")
    files = {"data": "data.parquet", "report": "report.json"}
    if quarantine_file:
        files["quarantine"] = quarantine_file
    if report.bias is not None:
        (work / "bias.json").write_bytes(orjson.dumps(report.bias, option=orjson.OPT_INDENT_2))
        files["bias_json"] = "bias.json"
        try:
            (work / "bias.html").write_text(
                render_bias_html(report.bias, title=f"{config.name} v{version}: bias and "
                                                    "representation"), encoding="utf-8")
            files["bias_html"] = "bias.html"
        except ModuleNotFoundError as exc:
            report.warnings.append(str(exc))
    report.seconds = time.perf_counter() - started
    manifest = {
        "id": dataset_id, "name": config.name, "version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "parent": None if parent is None else {"id": parent["id"],
                                               "version": parent["version"]},
        "content_hash": report.content_hash, "config_hash": report.config_hash,
        "path": report.path, "files": files, "schema": report.columns,
        "rows": {"in": report.rows_in, "out": report.rows_out,
                 "quarantined": report.rows_quarantined,
                 "duplicates_removed": report.duplicates_removed},
        "source": report.source, "pii": report.pii,
    }
    (work / "report.json").write_bytes(orjson.dumps(report.to_dict(),
                                                    option=orjson.OPT_INDENT_2))
    (work / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    os.replace(work, final)
    if registry is not None:
        registry.register(manifest)
