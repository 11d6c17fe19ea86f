"""The Batch API: a JSONL file of requests run through their targets' chains, answers written
to an output file and failures to an error file (OpenAI's format, so the official SDK works).

A batch is a row of `batches` plus one work item (kind `batch`) that a worker runs:

1. **validating**: the input is read once, line by line, and checked (JSON, `custom_id`
   unique, `method` POST, `url` the batch's endpoint, a `body` object); problems fail the
   batch with their line numbers.
2. **in_progress**: lines are read one at a time and sent through the target's chain at
   batch priority, `batches.line_concurrency` at once; answers are written in input order
   (a bounded window), so memory stays flat whatever the batch size. A 408, 429 or 5xx
   answer is retried (`batches.line_max_attempts`); other failures go to the error file.
3. **checkpoints**: every `batches.checkpoint_s` the output written so far is fsynced and the
   progress (input offset, output sizes, counts) stored. A gateway that dies mid-batch loses
   its lease; the next attempt resumes from the checkpoint (work after it is done again), in
   a part file of its own, and only the attempt that holds the batch may write its progress.
4. **finalizing → completed** (or **cancelled**, **expired** past the completion window with
   the remaining lines in the error file as `batch_expired`, or **failed**).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Engine, func, insert, select, update

from shipyard.config.jobs import BatchesConfig, parse_window
from shipyard.errors import Conflict, InvalidRequest, NotFound
from shipyard.jobs.files import FileObject, FileStore
from shipyard.jobs.jobs import (
    RETRYABLE,
    JobRequest,
    Run,
    check_metadata,
    error_message,
    principal_from_json,
    principal_to_json,
    retry_after_s,
)
from shipyard.jobs.tables import batches
from shipyard.security.principal import Principal
from shipyard.webhooks.delivery import WebhookOutbox
from shipyard.work import Attempt, Backoff, Permanent, Worker, WorkItem, WorkQueue, new_item_id

__all__ = ["BATCH_ENDPOINTS", "KIND", "TERMINAL", "Batch", "Batches", "batch_endpoint",
           "validate_input"]

KIND = "batch"
TERMINAL = ("completed", "failed", "expired", "cancelled")
BATCH_ENDPOINTS = {"/v1/chat/completions": "chat/completions", "/v1/embeddings": "embeddings",
                   "/v1/completions": "completions"}
_SERVICE = re.compile(r"^/v1/services/([A-Za-z0-9][A-Za-z0-9._:-]{0,127})/invoke$")
_ERRORS_MAX = 100
_EVENTS = {"completed": "batch.completed", "failed": "batch.failed",
           "expired": "batch.expired", "cancelled": "batch.cancelled"}


def batch_endpoint(path: str) -> tuple[str, str | None]:
    """(the chain's endpoint, the service name or None) of a batch `endpoint`."""
    if path in BATCH_ENDPOINTS:
        return BATCH_ENDPOINTS[path], None
    found = _SERVICE.match(path)
    if found:
        return "invoke", found.group(1)
    raise InvalidRequest(f"'endpoint' is {path!r}; a batch runs one of "
                         f"{', '.join(BATCH_ENDPOINTS)} or /v1/services/NAME/invoke.",
                         param="endpoint")


def _error(line: int | None, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def validate_input(path: Path, endpoint: str, *, max_lines: int) -> tuple[int, list[dict[str,
                                                                                          Any]]]:
    """Check every line of a batch input file; (request count, up to 100 errors)."""
    errors: list[dict[str, Any]] = []
    seen: set[bytes] = set()  # 8-byte digests of custom_ids, not the ids themselves
    total = 0
    chain, service = batch_endpoint(endpoint)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if len(errors) >= _ERRORS_MAX:
                break
            if not raw.strip():
                continue
            total += 1
            if total > max_lines:
                errors.append(_error(number, "too_many_requests", f"The file has more than "
                                     f"{max_lines} requests (batches.max_lines); split it."))
                break
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                errors.append(_error(number, "invalid_json_line",
                                     f"Line {number} is not valid JSON ({exc.msg})."))
                continue
            if not isinstance(line, dict):
                errors.append(_error(number, "invalid_request",
                                     f"Line {number} must be a JSON object."))
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                errors.append(_error(number, "missing_custom_id", f"Line {number} has no "
                                     "'custom_id'; give every request a unique string id.",
                                     "custom_id"))
                continue
            digest = hashlib.blake2b(custom_id.encode(), digest_size=8).digest()
            if digest in seen:
                errors.append(_error(number, "duplicate_custom_id", f"Line {number}: "
                                     f"custom_id {custom_id[:80]!r} is used more than once; "
                                     "custom_ids must be unique in a batch.", "custom_id"))
                continue
            seen.add(digest)
            if str(line.get("method", "")).upper() != "POST":
                errors.append(_error(number, "invalid_method", f"Line {number}: 'method' is "
                                     f"{line.get('method')!r}; it must be POST.", "method"))
            elif line.get("url") != endpoint:
                errors.append(_error(number, "mismatched_endpoint", f"Line {number}: 'url' is "
                                     f"{line.get('url')!r}, but the batch's endpoint is "
                                     f"{endpoint!r}; every line must use it.", "url"))
            elif not isinstance(line.get("body"), dict):
                errors.append(_error(number, "invalid_body", f"Line {number}: 'body' must be "
                                     "a JSON object (the request).", "body"))
            elif service is None and not isinstance(line["body"].get("model"), str):
                errors.append(_error(number, "missing_model", f"Line {number}: the body has no "
                                     f"'model'; name a model alias for {chain}.", "body.model"))
    if total == 0 and not errors:
        errors.append(_error(None, "empty_file", "The input file has no requests; write one "
                             "JSON request per line."))
    return total, errors


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


@dataclass
class Progress:
    """A batch's durable progress: everything before `offset` of the input is answered in
    the first `out`/`err` bytes of the part files written by attempt `attempt`."""

    attempt: int = 0
    line: int = 0
    offset: int = 0
    out: int = 0
    err: int = 0
    completed: int = 0
    failed: int = 0
    done: bool = False

    @classmethod
    def of(cls, text: str | None) -> Progress:
        if not text:
            return cls()
        data = orjson.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


_TIMES = ("created_at", "expires_at", "in_progress_at", "finalizing_at", "completed_at",
          "failed_at", "expired_at", "cancelling_at", "cancelled_at")


@dataclass(frozen=True)
class Batch:
    row: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def status(self) -> str:
        return str(self.row["status"])

    @property
    def tenant_id(self) -> str:
        return str(self.row["tenant_id"])

    @property
    def progress(self) -> Progress:
        return Progress.of(self.row["checkpoint"])

    def public(self) -> dict[str, Any]:
        """OpenAI's Batch object."""
        r = self.row
        errors = orjson.loads(r["errors"]) if r["errors"] else None
        out: dict[str, Any] = {
            "id": r["id"], "object": "batch", "endpoint": r["endpoint"],
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": r["input_file_id"], "completion_window": r["completion_window"],
            "status": r["status"], "output_file_id": r["output_file_id"],
            "error_file_id": r["error_file_id"],
            "request_counts": {"total": r["total"], "completed": r["completed"],
                               "failed": r["failed"]},
            "metadata": orjson.loads(r["metadata"]) if r["metadata"] else None}
        for name in _TIMES:
            out[name] = _ts(r[name])
        return out


class Batches:
    """Create, read, list and cancel batches, and run them from a `Worker` (see the module
    docstring). Store calls block: call them from a thread in async code."""

    def __init__(self, engine: Engine, queue: WorkQueue, files: FileStore,
                 config: BatchesConfig, *, outbox: WebhookOutbox | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.queue = queue
        self.files = files
        self.config = config
        self.outbox = outbox
        self.clock = clock or (lambda: datetime.now(UTC))
        self._run: Run | None = None
        self._stopping: Callable[[], bool] = lambda: False
        self._worker: Worker | None = None

    # -- the API ----------------------------------------------------------------------------
    def create(self, principal: Principal, *, input_file_id: str, endpoint: str,
               completion_window: str, metadata: dict[str, Any] | None = None) -> Batch:
        batch_endpoint(endpoint)
        if completion_window not in self.config.completion_windows:
            raise InvalidRequest(
                f"'completion_window' is {completion_window!r}; use "
                f"{' or '.join(repr(w) for w in self.config.completion_windows)} "
                "(batches.completion_windows).", param="completion_window")
        source = self.files.get(input_file_id, tenant_id=principal.tenant_id)
        if source.purpose != "batch":
            raise InvalidRequest(f"File '{input_file_id}' was uploaded with purpose "
                                 f"'{source.purpose}'; upload the input with purpose 'batch'.",
                                 param="input_file_id")
        meta = check_metadata(metadata)
        now = self.clock()
        batch_id = new_item_id("batch")
        item_id = new_item_id("wrk")
        row = {"id": batch_id, "tenant_id": principal.tenant_id, "endpoint": endpoint,
               "input_file_id": input_file_id, "completion_window": completion_window,
               "status": "validating", "item_id": item_id,
               "metadata": orjson.dumps(meta).decode() if meta else None,
               "principal": orjson.dumps(principal_to_json(principal)).decode(),
               "created_at": now,
               "expires_at": now + timedelta(seconds=parse_window(completion_window))}
        with self.engine.begin() as connection:
            connection.execute(insert(batches).values(**row))
        self.queue.enqueue(KIND, {"batch_id": batch_id}, tenant_id=principal.tenant_id,
                           max_attempts=self.config.max_attempts, ref=batch_id,
                           item_id=item_id)
        if self._worker is not None:
            self._worker.wake(KIND)
        return self.get(batch_id, tenant_id=principal.tenant_id)

    def get(self, batch_id: str, *, tenant_id: str | None) -> Batch:
        query = select(batches).where(batches.c.id == batch_id)
        if tenant_id is not None:
            query = query.where(batches.c.tenant_id == tenant_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            raise NotFound(f"There is no batch '{batch_id}' in this tenant; list them with "
                           "GET /v1/batches.", param="batch_id")
        data = dict(row._mapping)
        for name in _TIMES:
            data[name] = _aware(data[name])
        return Batch(data)

    def list_batches(self, *, tenant_id: str | None, limit: int = 20,
             after: str | None = None) -> tuple[list[Batch], bool]:
        t = batches
        query = select(t.c.id)
        if tenant_id is not None:
            query = query.where(t.c.tenant_id == tenant_id)
        if after is not None:
            cursor = self.get(after, tenant_id=tenant_id)
            at = cursor.row["created_at"]
            query = query.where((t.c.created_at < at) | ((t.c.created_at == at)
                                                         & (t.c.id < cursor.id)))
        query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
        with self.engine.connect() as connection:
            ids = [r[0] for r in connection.execute(query)]
        return [self.get(i, tenant_id=None) for i in ids[:limit]], len(ids) > limit

    def cancel(self, batch_id: str, *, tenant_id: str | None) -> Batch:
        """Ask a batch to stop: `cancelling` now, `cancelled` once the lines in flight are
        dropped and what was answered is written (at once for a batch not yet started)."""
        batch = self.get(batch_id, tenant_id=tenant_id)
        if batch.status in TERMINAL:
            raise Conflict(f"Batch '{batch_id}' is {batch.status}; only a validating or "
                           "in_progress batch can be cancelled.", param="batch_id")
        now = self.clock()
        with self.engine.begin() as connection:
            connection.execute(update(batches).where(
                batches.c.id == batch_id, batches.c.status.in_(("validating", "in_progress")))
                .values(status="cancelling", cancelling_at=now))
        item = self.queue.get(str(batch.row["item_id"]), tenant_id=None)
        if item.status == "queued":
            stopped = self.queue.cancel(item.id, tenant_id=None)
            if stopped.status == "cancelled":
                self._finalize(self.get(batch_id, tenant_id=None), "cancelled", None)
        elif item.finished:
            self._finalize(self.get(batch_id, tenant_id=None), "cancelled", None)
        if self._worker is not None:
            self._worker.wake(KIND)
        return self.get(batch_id, tenant_id=tenant_id)

    def reading(self, file_id: str) -> Batch | None:
        """A batch that has not ended and reads `file_id` as its input, if any."""
        with self.engine.connect() as connection:
            found = connection.execute(select(batches.c.id).where(
                batches.c.input_file_id == file_id,
                batches.c.status.not_in(TERMINAL)).limit(1)).scalar()
        return None if found is None else self.get(str(found), tenant_id=None)

    def counts(self) -> dict[str, int]:
        """How many batches are in each status."""
        with self.engine.connect() as connection:
            return {str(status): int(n) for status, n in connection.execute(
                select(batches.c.status, func.count()).group_by(batches.c.status))}

    # -- running ----------------------------------------------------------------------------
    def attach(self, worker: Worker, *, run: Run,
               stopping: Callable[[], bool] = lambda: False) -> None:
        """Run batches from `worker` (`batches.concurrency` at once)."""
        self._run, self._stopping, self._worker = run, stopping, worker
        worker.handle(KIND, self.handle, concurrency=self.config.concurrency,
                      backoff=Backoff(1.0, 60.0), on_finish=self._finished)

    def _update(self, batch_id: str, *, holder: int | None = None, **values: Any) -> bool:
        """Update a batch row (only while attempt `holder` holds it, when given)."""
        query = update(batches).where(batches.c.id == batch_id)
        if holder is not None:
            query = query.where(batches.c.attempt == holder)
        with self.engine.begin() as connection:
            return bool(connection.execute(query.values(**values)).rowcount)

    def _part(self, batch_id: str, attempt: int, which: str) -> Path:
        return self.files.directory / f".{batch_id}.{attempt}.{which}.part"

    async def handle(self, item: WorkItem, attempt: Attempt) -> dict[str, Any]:
        """The worker's handler: run (or resume) one batch."""
        batch = await asyncio.to_thread(self.get, str(item.payload["batch_id"]),
                                        tenant_id=None)
        if batch.status in TERMINAL:
            return {"status": batch.status}
        if batch.status == "cancelling":
            await asyncio.to_thread(self._finalize, batch, "cancelled", None)
            return {"status": "cancelled"}
        if batch.status == "validating":
            source = await asyncio.to_thread(self.files.get, str(batch.row["input_file_id"]),
                                             tenant_id=batch.tenant_id)
            try:
                total, errors = await asyncio.to_thread(
                    validate_input, self.files.path_of(source), str(batch.row["endpoint"]),
                    max_lines=self.config.max_lines)
            except FileNotFoundError:
                raise Permanent("The input file's bytes are gone from batches.files_dir; "
                                "upload it again and create a new batch.") from None
            if errors:
                await asyncio.to_thread(self._failed, batch, errors)
                return {"status": "failed"}
            await asyncio.to_thread(self._update, batch.id, status="in_progress",
                                    in_progress_at=self.clock(), total=total)
            batch = await asyncio.to_thread(self.get, batch.id, tenant_id=None)
            if batch.status != "in_progress":  # cancelled meanwhile
                await asyncio.to_thread(self._finalize, batch, "cancelled", None)
                return {"status": "cancelled"}
        status = await self._process(batch, attempt.number)
        return {"status": status}

    async def _process(self, batch: Batch, number: int) -> str:
        previous = batch.progress
        progress = Progress(**{**asdict(previous), "attempt": number})
        if previous.done:
            await asyncio.to_thread(self._finalize, batch, "completed", previous)
            return "completed"
        out, err = await asyncio.to_thread(self._open_parts, batch.id, previous, number)
        # Take the batch over (its part files are this attempt's own now): from here on only
        # this attempt may write its progress.
        await asyncio.to_thread(self._update, batch.id, attempt=number,
                                checkpoint=orjson.dumps(asdict(progress)).decode())
        source = await asyncio.to_thread(self.files.get, str(batch.row["input_file_id"]),
                                         tenant_id=batch.tenant_id)
        inp = await asyncio.to_thread(self.files.path_of(source).open, "rb")
        principal = principal_from_json(orjson.loads(batch.row["principal"]))
        chain, service = batch_endpoint(str(batch.row["endpoint"]))
        expires = batch.row["expires_at"]
        window: deque[tuple[asyncio.Task[tuple[bool, bytes]] | None, int, bytes]] = deque()
        width = self.config.line_concurrency
        last = time.monotonic()
        stop: str | None = "expired" if self.clock() >= expires else None
        offset = previous.offset
        inp.seek(offset)

        async def write_head() -> None:
            task, end, _ = window.popleft()
            if task is not None:
                ok, data = await task
                (out if ok else err).write(data)
                if ok:
                    progress.completed += 1
                else:
                    progress.failed += 1
                progress.line += 1
            progress.offset = end
            progress.out, progress.err = out.tell(), err.tell()

        async def checkpoint() -> str | None:
            nonlocal last
            last = time.monotonic()
            return await asyncio.to_thread(self._checkpoint, batch.id, progress, out, err,
                                           expires)

        try:
            while stop is None:
                raw = inp.readline()
                if not raw:
                    break
                offset += len(raw)
                task = None
                if raw.strip():
                    task = asyncio.ensure_future(self._line(raw, principal, chain, service,
                                                            batch.id))
                window.append((task, offset, raw))
                while len(window) >= width and stop is None:
                    await write_head()
                    if time.monotonic() - last >= self.config.checkpoint_s:
                        stop = await checkpoint()
            while window and stop is None:
                await write_head()
                if time.monotonic() - last >= self.config.checkpoint_s:
                    stop = await checkpoint()
            if stop is None:
                stop = await checkpoint()
        except asyncio.CancelledError:
            for task, _, _ in window:
                if task is not None:
                    task.cancel()
            # Stopping or cancelled by the worker: keep what is written, then let go.
            await asyncio.shield(asyncio.to_thread(self._checkpoint, batch.id, progress, out,
                                                   err, expires))
            fresh = await asyncio.shield(asyncio.to_thread(self.get, batch.id,
                                                           tenant_id=None))
            if fresh.status == "cancelling":
                await asyncio.shield(asyncio.to_thread(self._close_and_finalize, fresh,
                                                       "cancelled", progress, out, err, inp))
            raise
        if stop == "lost":
            for task, _, _ in window:
                if task is not None:
                    task.cancel()
            await asyncio.to_thread(_close_all, out, err, inp)
            raise Permanent("Another attempt took this batch over.")
        if stop == "expired":
            for task, _, raw in window:
                if task is not None:
                    task.cancel()
                    err.write(_expired_line(raw))
                    progress.failed += 1
                    progress.line += 1
            window.clear()
            while raw := inp.readline():
                if raw.strip():
                    err.write(_expired_line(raw))
                    progress.failed += 1
                    progress.line += 1
            progress.out, progress.err = out.tell(), err.tell()
        elif stop == "cancelled":
            for task, _, _ in window:
                if task is not None:
                    task.cancel()
            window.clear()
        final = stop if stop in ("expired", "cancelled") else "completed"
        await asyncio.to_thread(self._close_and_finalize, batch, final, progress, out, err,
                                inp)
        return final

    def _open_parts(self, batch_id: str, previous: Progress,
                    number: int) -> tuple[IO[bytes], IO[bytes]]:
        handles = []
        self.files.directory.mkdir(parents=True, exist_ok=True)
        for which, size in (("output", previous.out), ("error", previous.err)):
            mine = self._part(batch_id, number, which)
            theirs = self._part(batch_id, previous.attempt, which)
            if previous.attempt != number and theirs.exists():
                # Resume from the last checkpoint in a file of this attempt's own: an
                # attempt that lost its lease may still be writing to the old one.
                with theirs.open("rb") as src, mine.open("wb") as dst:
                    _copy(src, dst, size)
            elif not mine.exists():
                mine.touch()
            handle = mine.open("r+b")
            handle.truncate(size)
            handle.seek(size)
            handles.append(handle)
        return handles[0], handles[1]

    def _checkpoint(self, batch_id: str, progress: Progress, out: IO[bytes], err: IO[bytes],
                    expires: datetime) -> str | None:
        """Make the progress durable; then say whether to stop (cancelled, expired, or this
        attempt no longer holds the batch)."""
        for handle in (out, err):
            handle.flush()
            os.fsync(handle.fileno())
        kept = self._update(batch_id, holder=progress.attempt,
                            checkpoint=orjson.dumps(asdict(progress)).decode(),
                            completed=progress.completed, failed=progress.failed)
        if not kept:
            return "lost"
        status = self.get(batch_id, tenant_id=None).status
        if status == "cancelling":
            return "cancelled"
        if self.clock() >= expires:
            return "expired"
        return None

    async def _line(self, raw: bytes, principal: Principal, chain: str, service: str | None,
                    batch_id: str) -> tuple[bool, bytes]:
        """One request of the batch, with retries; (answered?, its output line)."""
        assert self._run is not None  # set by attach()
        line = orjson.loads(raw)
        custom_id, body = line["custom_id"], line["body"]
        target = service or str(body.get("model"))
        backoff = Backoff(0.5, 30.0)
        attempts = self.config.line_max_attempts
        for number in range(1, attempts + 1):
            outcome = await self._run(JobRequest(principal, chain, target, body,
                                                 route="batch"))
            if outcome.status < 400:
                break
            if outcome.status == 503 and self._stopping():
                await asyncio.Event().wait()  # shutting down: released, resumed elsewhere
            if outcome.status not in RETRYABLE or number == attempts:
                break
            wait = retry_after_s(outcome.headers)
            await asyncio.sleep(min(30.0, wait) if wait is not None else
                                backoff.delay(number))
        ok = outcome.status < 400
        result: dict[str, Any] = {
            "id": f"batch_req_{os.urandom(12).hex()}", "custom_id": custom_id,
            "response": {"status_code": outcome.status,
                         "request_id": outcome.headers.get("x-request-id", outcome.trace_id),
                         "body": outcome.body},
            "error": None}
        if not ok:
            upstream: dict[str, Any] = (outcome.body["error"] if isinstance(
                outcome.body.get("error"), dict) else {})
            result["error"] = {"code": upstream.get("code") or upstream.get("type") or str(
                outcome.status), "message": error_message(outcome.body)}
        return ok, orjson.dumps(result) + b"\n"

    def _close_and_finalize(self, batch: Batch, status: str, progress: Progress,
                            out: IO[bytes], err: IO[bytes], inp: IO[bytes]) -> None:
        progress.done = status == "completed"
        for handle in (out, err):
            handle.flush()
            os.fsync(handle.fileno())
        _close_all(out, err, inp)
        if not self._update(batch.id, holder=progress.attempt,
                            checkpoint=orjson.dumps(asdict(progress)).decode(),
                            completed=progress.completed, failed=progress.failed,
                            finalizing_at=self.clock() if status == "completed" else None):
            return  # another attempt holds it now
        self._finalize(self.get(batch.id, tenant_id=None), status, progress)

    def _finalize(self, batch: Batch, status: str, progress: Progress | None) -> None:
        """Publish the output and error files written so far and end the batch in `status`
        (idempotent: the file ids are derived from the batch id)."""
        progress = progress or batch.progress
        stem = batch.id.removeprefix("batch_")
        files: dict[str, FileObject | None] = {}
        for which, size, column in (("output", progress.out, "output_file_id"),
                                    ("error", progress.err, "error_file_id")):
            part = self._part(batch.id, progress.attempt, which)
            files[column] = None
            if batch.row[column]:
                continue
            if size > 0:
                if part.exists():
                    with part.open("r+b") as handle:
                        handle.truncate(size)
                files[column] = self.files.adopt(
                    part, file_id=f"file-{stem}-{which}"[:64], tenant_id=batch.tenant_id,
                    purpose="batch_output", filename=f"{batch.id}_{which}.jsonl")
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        now = self.clock()
        values: dict[str, Any] = {"status": status, f"{status}_at": now,
                                  "completed": progress.completed, "failed": progress.failed}
        for column, found in files.items():
            if found is not None:
                values[column] = found.id
        if status == "completed" and batch.row["finalizing_at"] is None:
            values["finalizing_at"] = now
        with self.engine.begin() as connection:
            changed = connection.execute(update(batches).where(
                batches.c.id == batch.id, batches.c.status.not_in(TERMINAL))
                .values(**values)).rowcount
        if changed:
            self._announce(batch.id, status)

    def _failed(self, batch: Batch, errors: list[dict[str, Any]]) -> None:
        now = self.clock()
        with self.engine.begin() as connection:
            changed = connection.execute(update(batches).where(
                batches.c.id == batch.id, batches.c.status.not_in(TERMINAL)).values(
                status="failed", failed_at=now, errors=orjson.dumps(errors).decode()
            )).rowcount
        if changed:
            self._announce(batch.id, "failed")

    def _finished(self, item: WorkItem, status: str, error: str | None) -> None:
        """The batch's work item ended without the batch ending (dead-lettered after
        repeated crashes or errors, or cancelled by an operator): end the batch too."""
        if status not in ("dead", "cancelled"):
            return
        batch = self.get(str(item.payload["batch_id"]), tenant_id=None)
        if batch.status in TERMINAL:
            return
        if status == "cancelled" or batch.status == "cancelling":
            self._finalize(batch, "cancelled", None)
        else:
            self._failed(batch, [_error(None, "batch_failed", error or "The batch failed.")])

    def _announce(self, batch_id: str, status: str) -> None:
        event = _EVENTS.get(status)
        if event is None or self.outbox is None:
            return
        batch = self.get(batch_id, tenant_id=None)
        self.outbox.publish(event, {"batch": batch.public()}, tenant_id=batch.tenant_id,
                            idempotency_key=f"{batch_id}:{status}")


def _expired_line(raw: bytes) -> bytes:
    try:
        custom_id = orjson.loads(raw).get("custom_id")
    except (orjson.JSONDecodeError, AttributeError):
        custom_id = None
    return orjson.dumps({
        "id": f"batch_req_{os.urandom(12).hex()}", "custom_id": custom_id, "response": None,
        "error": {"code": "batch_expired", "message": "This request could not be executed "
                  "before the completion window expired."}}) + b"\n"


def _copy(src: IO[bytes], dst: IO[bytes], size: int) -> None:
    left = size
    while left > 0:
        block = src.read(min(left, 1 << 20))
        if not block:
            break
        dst.write(block)
        left -= len(block)


def _close_all(*handles: IO[bytes]) -> None:
    for handle in handles:
        with contextlib.suppress(OSError):
            handle.close()

