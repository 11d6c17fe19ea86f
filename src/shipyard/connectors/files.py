"""File drops: watch a folder for CSV, JSONL and Parquet files; run every row of each through
the target (or the whole file through a `shipyard data` pipeline); then move the file to
`done/` (or `failed/`) with its result files beside it:

- `NAME.results.jsonl`: one line per row — `{"row", "status": "ok"|"failed", "output",
  "error", "trace_id"}` (target mode);
- `NAME.summary.json`: the run id, counts, seconds and, for a file that could not be read, the
  error (and, with a pipeline, the pipeline's report).

A file is picked up once it has not changed for `settle_s` (so one still being written is
left alone) and claimed by renaming it into `.processing/` — several watchers on one folder
never take the same file. A claimed file is touched while it is worked on; one untouched for
a minute (its process died) is taken back and processed again. Each file is one run in the
store (`shipyard connectors status`).
"""

from __future__ import annotations

import asyncio
import csv
import fnmatch
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from shipyard.config.connectors import FilesConnectorConfig
from shipyard.connectors.base import (
    Connector,
    Environment,
    Outcome,
    Poison,
    decode,
    sleep_unless,
)
from shipyard.connectors.s3 import S3Inbox
from shipyard.errors import ConfigError

__all__ = ["FilesConnector", "read_rows"]

log = logging.getLogger("shipyard.connectors")

_CHUNK = 1000  # rows scored at once (memory stays flat in the file's size)
_STALE_CLAIM_S = 60.0
_TOUCH_S = 5.0


def read_rows(path: Path) -> Iterator[Any]:
    """The rows of a CSV (dicts by header), JSONL (one JSON value a line; a bad line yields
    a `Poison`) or Parquet file (dicts by column; needs the `data` extra)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as handle:
            yield from csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson"):
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    try:
                        yield decode(line)
                    except Poison as poison:
                        yield poison
    elif suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq  # optional: the data extra
        except ImportError as exc:
            raise ConfigError(f"Parquet files need pyarrow ({exc}); install it with "
                              "pip install 'shipyard[data]'.") from None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_CHUNK):
            yield from batch.to_pylist()
    else:
        raise ValueError(f"'{path.name}' is not CSV, TSV, JSONL or Parquet (by its suffix)")


class FilesConnector(Connector):
    kind = "files"
    config: FilesConnectorConfig

    def __init__(self, name: str, config: FilesConnectorConfig, env: Environment) -> None:
        super().__init__(name, config, env)
        self.inbox = Path(config.path)
        self.processing = self.inbox / ".processing"
        self.done = Path(config.done_dir)
        self.failed = Path(config.failed_dir)
        self.files_done = 0
        self.files_failed = 0
        self._pipeline: Any = None
        self.s3 = S3Inbox(config.s3, name) if config.s3 is not None else None
        if config.pipeline is not None:
            try:  # optional: the data extra
                from shipyard.data.config import load_pipeline
            except ImportError as exc:
                raise ConfigError(f"connectors.{name}.pipeline needs the data extra ({exc}); "
                                  "install it with pip install 'shipyard[data]'.") from None
            self._pipeline = load_pipeline(config.pipeline)

    async def run(self, stop: asyncio.Event) -> None:
        for folder in (self.inbox, self.processing, self.done, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self.set_state("running")
        idle_since = time.monotonic()
        while not stop.is_set() and not self.enough():
            if self.s3 is not None:
                try:
                    await asyncio.to_thread(self.s3.fetch, self.inbox, self.config.patterns,
                                            self.config.settle_s)
                except Exception as exc:  # the bucket is unreachable: try again next poll
                    self.set_state("reconnecting", f"S3: {type(exc).__name__}: {exc}")
                    log.warning("connector %s: listing the bucket failed: %s", self.name, exc)
                else:
                    self.set_state("running")
            found = await asyncio.to_thread(self._ready)
            for path in found:
                if stop.is_set():
                    break
                claimed = await asyncio.to_thread(self._claim, path)
                if claimed is not None:
                    await self.process(claimed)
            if found:
                idle_since = time.monotonic()
            idle = self.env.idle_exit_s
            if idle is not None and time.monotonic() - idle_since > idle:
                break
            await sleep_unless(stop, self.config.poll_interval_s)
        self.set_state("stopped")

    def _ready(self) -> list[Path]:
        """Files matching the patterns that have settled, oldest first, and claims whose
        process died."""
        now = time.time()
        ready: list[tuple[float, Path]] = []
        for folder, age in ((self.inbox, self.config.settle_s),
                            (self.processing, _STALE_CLAIM_S)):
            for entry in os.scandir(folder):
                if not entry.is_file() or entry.name.startswith("."):
                    continue
                if not any(fnmatch.fnmatch(entry.name, p) for p in self.config.patterns):
                    continue
                modified = entry.stat().st_mtime
                if now - modified >= age:
                    ready.append((modified, Path(entry.path)))
        return [path for _, path in sorted(ready)]

    def _claim(self, path: Path) -> Path | None:
        target = self.processing / path.name
        taken_back = path.parent == self.processing
        try:
            if taken_back:  # a claim whose process stopped: touch it to hold it again
                os.utime(path)
            else:
                os.replace(path, target)
        except FileNotFoundError:  # another watcher took it
            return None
        if taken_back:
            log.warning("connector %s: taking back %s (its process stopped)", self.name,
                        path.name)
        return target

    async def process(self, path: Path) -> dict[str, Any]:
        """Process one claimed file and move it; its summary."""
        runs = self.env.runs
        run = await asyncio.to_thread(runs.start, self.name, "files")
        run.detail = {"file": path.name}
        started = time.monotonic()
        toucher = asyncio.create_task(self._touch(path))
        summary: dict[str, Any] = {"file": path.name, "run_id": run.id,
                                   "connector": self.name}
        status, error = "succeeded", None
        try:
            if self._pipeline is not None:
                summary["pipeline"] = await asyncio.to_thread(self._run_pipeline, path)
                counts = summary["pipeline"].get("rows", {})
                run.processed, run.succeeded = counts.get("in", 0), counts.get("out", 0)
                run.failed = counts.get("quarantined", 0)
            else:
                counts = await self._score_file(path)
                summary.update(counts)
                run.processed, run.succeeded = counts["rows"], counts["ok"]
                run.failed = counts["failed"]
                if counts["failed"] and self.config.fail_on_row_errors:
                    status, error = "failed", f"{counts['failed']} rows failed"
        except _Stopping:  # left claimed: taken back and done again after the restart
            toucher.cancel()
            await asyncio.to_thread(runs.finish, run, "interrupted", None)
            self.env.metrics.connector_runs.labels(self.name, "interrupted").inc()
            return {**summary, "status": "interrupted"}
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            log.warning("connector %s: %s failed: %s", self.name, path.name, error)
        finally:
            toucher.cancel()
        summary.update({"status": status, "error": error,
                        "seconds": round(time.monotonic() - started, 3)})
        moved = await asyncio.to_thread(self._move, path, summary,
                                        self.done if status == "succeeded" else self.failed)
        if self.s3 is not None:
            try:
                await asyncio.to_thread(self.s3.upload, moved, done=status == "succeeded")
            except Exception as exc:  # kept locally in done/ or failed/
                log.warning("connector %s: uploading %s's results failed (%s); they are in %s",
                            self.name, path.name, exc, moved[0].parent)
        await asyncio.to_thread(runs.finish, run, status, error)
        self.env.metrics.connector_runs.labels(self.name, status).inc()
        if status == "succeeded":
            self.files_done += 1
        else:
            self.files_failed += 1
        return summary

    async def _touch(self, path: Path) -> None:
        while True:
            await asyncio.sleep(_TOUCH_S)
            try:
                os.utime(path)
            except OSError:
                return

    def _run_pipeline(self, path: Path) -> dict[str, Any]:
        from shipyard.data.pipeline import run_pipeline  # the data extra, checked at start

        base = self._pipeline
        config = base.model_copy(update={"source": base.source.model_copy(
            update={"path": str(path.resolve())})})
        report = run_pipeline(config, store=self.env.runs.engine)  # a registered version
        result: dict[str, Any] = report.to_dict()
        return result

    async def _score_file(self, path: Path) -> dict[str, int]:
        results = path.with_name(path.name + ".results.jsonl")
        counts = {"rows": 0, "ok": 0, "failed": 0}
        rows = read_rows(path)
        if path.suffix.lower() in (".csv", ".tsv"):
            rows = (_typed(row, self.dispatcher.input_schema) for row in rows)
        slots = asyncio.Semaphore(self.config.concurrency)
        dispatcher = self.dispatcher

        async def one(row: Any) -> Outcome:
            if isinstance(row, Poison):
                return Outcome(False, row.status, {}, reason=row.reason, error=row.message)
            async with slots:
                self.begin()
                try:
                    return await dispatcher.call(row)
                finally:
                    self.end()

        with results.open("wb") as out:
            while True:
                chunk = await asyncio.to_thread(_take, rows, _CHUNK)
                if not chunk:
                    break
                outcomes = await asyncio.gather(*(one(row) for row in chunk))
                if any(o.unsettled for o in outcomes):
                    raise _Stopping
                lines = []
                for outcome in outcomes:
                    lines.append(orjson.dumps(
                        {"row": counts["rows"], "status": "ok" if outcome.ok else "failed",
                         "output": outcome.output if outcome.ok else None,
                         "error": None if outcome.ok else f"{outcome.reason}: {outcome.error}",
                         "trace_id": outcome.trace_id or None}, default=str) + b"\n")
                    counts["rows"] += 1
                    counts["ok" if outcome.ok else "failed"] += 1
                    self.counted(outcome)
                out.write(b"".join(lines))
        return counts

    def _move(self, path: Path, summary: dict[str, Any], folder: Path) -> list[Path]:
        """Move the file and its result files into `folder`; their new paths."""
        name = path.name
        if (folder / name).exists():  # the same name dropped again: keep both
            stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{summary['run_id'][-6:]}"
            name = f"{path.stem}.{stem}{path.suffix}"
        moved = [folder / name, folder / f"{name}.summary.json"]
        results = path.with_name(path.name + ".results.jsonl")
        if results.exists():
            os.replace(results, folder / f"{name}.results.jsonl")
            moved.append(folder / f"{name}.results.jsonl")
        moved[1].write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2, default=str))
        os.replace(path, moved[0])
        return moved


class _Stopping(Exception):
    """The process stops while a file is worked on: the file is left for the next run."""


def _typed(row: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
    """A CSV row (all text) with the values converted to the types the service's input
    schema names: integer, number, boolean; an empty cell of such a column is null."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return row
    typed: dict[str, Any] = dict(row)
    for name, value in row.items():
        spec = properties.get(name)
        kind = spec.get("type") if isinstance(spec, dict) else None
        if not isinstance(value, str) or kind not in ("integer", "number", "boolean"):
            continue
        text = value.strip()
        try:
            if not text:
                typed[name] = None
            elif kind == "integer":
                typed[name] = int(text)
            elif kind == "number":
                typed[name] = float(text)
            elif text.lower() in ("true", "false", "1", "0", "yes", "no"):
                typed[name] = text.lower() in ("true", "1", "yes")
        except ValueError:
            pass  # left as text: the service's validation names the field
    return typed


def _take(rows: Iterator[Any], n: int) -> list[Any]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= n:
            break
    return chunk
