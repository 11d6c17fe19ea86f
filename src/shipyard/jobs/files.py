"""Files for the Files and Batch APIs: bytes on disk under `batches.files_dir`, one row each
in the store's `files` table (who owns it, its purpose, name and size).

Uploads are written to a temporary file beside their final place in chunks, then renamed, so
a file is either whole or absent, and memory stays flat whatever its size. Another tenant's
file is a 404 like a missing one.

>>> store = FileStore(engine, Path(".shipyard/files"))  # doctest: +SKIP
>>> f = await store.save(tenant_id="acme", purpose="batch", filename="in.jsonl",
...                      chunks=upload_chunks)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from shipyard.config.schema import Config
from shipyard.errors import InvalidRequest, NotFound, PayloadTooLarge
from shipyard.jobs.tables import files

__all__ = ["UPLOAD_PURPOSES", "FileObject", "FileStore", "files_dir", "new_file_id"]

# What an upload may be for; `batch_output` files are written by batches only.
UPLOAD_PURPOSES = ("batch", "user_data")
_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,59}$")


def new_file_id() -> str:
    return f"file-{os.urandom(12).hex()}"


def files_dir(config: Config) -> Path:
    """`batches.files_dir`, or `files/` beside a SQLite store, else `.shipyard/files`."""
    if config.batches.files_dir:
        return Path(config.batches.files_dir)
    url = config.store.url
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///")).expanduser().parent / "files"
    return Path(".shipyard/files")


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class FileObject:
    id: str
    tenant_id: str
    purpose: str
    filename: str
    bytes: int
    path: str
    created_at: datetime
    expires_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> FileObject:
        m = row._mapping
        return cls(id=m["id"], tenant_id=m["tenant_id"], purpose=m["purpose"],
                   filename=m["filename"], bytes=int(m["bytes"]), path=m["path"],
                   created_at=_aware(m["created_at"]),  # type: ignore[arg-type]
                   expires_at=_aware(m["expires_at"]))

    def public(self) -> dict[str, Any]:
        """OpenAI's File object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes,
                "created_at": int(self.created_at.timestamp()), "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None,
                "expires_at": None if self.expires_at is None else int(
                    self.expires_at.timestamp())}


class FileStore:
    """Files on disk plus their rows in the store (blocking methods: call from a thread,
    except `save`, which is async)."""

    def __init__(self, engine: Engine, directory: Path, *, max_bytes: int = 200 * 1024 * 1024,
                 retention_days: float = 30.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.directory = directory
        self.max_bytes = max_bytes
        self.retention_days = retention_days
        self.clock = clock or (lambda: datetime.now(UTC))

    def _expiry(self, now: datetime) -> datetime | None:
        return now + timedelta(days=self.retention_days) if self.retention_days > 0 else None

    def path_of(self, file: FileObject) -> Path:
        return self.directory / file.path

    async def save(self, *, tenant_id: str, purpose: str, filename: str,
                   chunks: AsyncIterator[bytes]) -> FileObject:
        """Write an upload to disk chunk by chunk, then record it (413 past `max_bytes`)."""
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(f"'purpose' is {purpose!r}; uploads may be for "
                                 f"{' or '.join(UPLOAD_PURPOSES)} (use 'batch' for a Batch "
                                 "API input file).", param="purpose")
        name = (filename or "upload").replace("/", "_").replace("\\", "_")[:255]
        file_id = new_file_id()
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        final = self.directory / file_id
        partial = self.directory / f".{file_id}.part"
        size = 0
        handle = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_bytes:
                    raise PayloadTooLarge(
                        f"The file is larger than {self.max_bytes} bytes "
                        "(batches.max_file_bytes); split it into smaller files.")
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_sync_close, handle)
            await asyncio.to_thread(os.replace, partial, final)
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return await asyncio.to_thread(self._insert, file_id, tenant_id, purpose, name, size)

    def _insert(self, file_id: str, tenant_id: str, purpose: str, filename: str,
                size: int) -> FileObject:
        now = self.clock()
        row: dict[str, Any] = {"id": file_id, "tenant_id": tenant_id, "purpose": purpose,
               "filename": filename, "bytes": size, "path": file_id, "created_at": now,
               "expires_at": self._expiry(now)}
        with self.engine.begin() as connection:
            connection.execute(insert(files).values(**row))
        return FileObject(**row)

    def adopt(self, source: Path, *, file_id: str, tenant_id: str, purpose: str,
              filename: str) -> FileObject:
        """Record a file a batch wrote (moved into place under `file_id`). Idempotent: a
        second call for the same id returns the first record."""
        final = self.directory / file_id
        if source.exists():
            os.replace(source, final)
        try:
            return self._insert(file_id, tenant_id, purpose, filename, final.stat().st_size)
        except IntegrityError:
            return self.get(file_id, tenant_id=tenant_id)

    def get(self, file_id: str, *, tenant_id: str | None) -> FileObject:
        query = select(files).where(files.c.id == file_id)
        if tenant_id is not None:
            query = query.where(files.c.tenant_id == tenant_id)
        row = None
        if _ID.match(file_id):
            with self.engine.connect() as connection:
                row = connection.execute(query).first()
        if row is None:
            raise NotFound(f"There is no file '{file_id}' in this tenant; list them with GET "
                           "/v1/files.", param="file_id")
        return FileObject.from_row(row)

    def list(self, *, tenant_id: str | None, purpose: str | None = None, limit: int = 100,
             after: str | None = None, order: str = "desc") -> tuple[list[FileObject], bool]:
        """Files by creation time (`order` asc or desc), paged with `after` (an id)."""
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"Query parameter 'order' is {order!r}; use asc or desc.",
                                 param="order")
        t = files
        query = select(t)
        if tenant_id is not None:
            query = query.where(t.c.tenant_id == tenant_id)
        if purpose is not None:
            query = query.where(t.c.purpose == purpose)
        if after is not None:
            cursor = self.get(after, tenant_id=tenant_id)
            at = cursor.created_at
            if order == "desc":
                query = query.where((t.c.created_at < at) | ((t.c.created_at == at)
                                                             & (t.c.id < cursor.id)))
            else:
                query = query.where((t.c.created_at > at) | ((t.c.created_at == at)
                                                             & (t.c.id > cursor.id)))
        ordering = ((t.c.created_at.desc(), t.c.id.desc()) if order == "desc"
                    else (t.c.created_at.asc(), t.c.id.asc()))
        query = query.order_by(*ordering).limit(limit + 1)
        with self.engine.connect() as connection:
            rows = [FileObject.from_row(r) for r in connection.execute(query)]
        return rows[:limit], len(rows) > limit

    def delete(self, file_id: str, *, tenant_id: str | None) -> FileObject:
        found = self.get(file_id, tenant_id=tenant_id)
        with self.engine.begin() as connection:
            connection.execute(delete(files).where(files.c.id == found.id))
        with contextlib.suppress(FileNotFoundError):
            self.path_of(found).unlink()
        return found

    def purge(self, *, now: datetime | None = None, limit: int = 1000) -> int:
        """Delete files past their `expires_at` (rows and bytes); returns how many."""
        now = now or self.clock()
        with self.engine.connect() as connection:
            rows = [FileObject.from_row(r) for r in connection.execute(
                select(files).where(files.c.expires_at <= now).limit(limit))]
        for found in rows:
            with self.engine.begin() as connection:
                connection.execute(delete(files).where(files.c.id == found.id))
            with contextlib.suppress(FileNotFoundError):
                self.path_of(found).unlink()
        return len(rows)


def _sync_close(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
