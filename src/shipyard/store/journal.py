"""The durable trace journal: records appended to a file before the response leaves.

With `traces.durable` on, the gateway hands a request's record to `TraceWriter.submit(...,
durable=True)` before it sends the response; the record goes to the in-memory buffer as usual
*and* is appended (one `write` call, JSON line) to this process's current journal segment in
the spool folder. Once the write returns, the kernel holds the bytes: killing the process
(SIGKILL, the OOM killer, a crash) cannot lose them. The writer thread rotates the segment
each time it drains the buffer and deletes it once every record in it is in the store or the
spool. Segments left behind by a process that died are renamed into spool segments (same
format: one JSON object per line) at the next start, and replayed; a record that was also
written before the crash is recognised by its id and skipped.

Not covered: losing the machine itself (power, kernel panic) before the page cache reaches the
disk — no `fsync` is made on the request path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from itertools import count
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Journal"]

log = logging.getLogger("shipyard.traces")
SUFFIX = ".journal"


class Journal:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.lock = threading.Lock()  # held by submit (append + enqueue) and by rotate
        self._seq = count()
        self._fd: int | None = None
        self._path: Path | None = None
        self.appended = 0
        self.overflowed = False  # a record of the open segment is not in the writer's buffer

    def append(self, record: dict[str, Any]) -> None:
        """Append one record to the open segment (call with `lock` held)."""
        # default=str: an attribute of any type (a user's stage) never fails the append
        line = orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n"
        if self._fd is None:
            self._open()
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)  # type: ignore[arg-type]
            view = view[written:]
        self.appended += 1

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):08d}{SUFFIX}"
        self._path = self.folder / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def rotate(self) -> tuple[Path, bool] | None:
        """Close the open segment: (its path, whether some of its records overflowed the
        writer's buffer and must be read back from it), or None when nothing was appended."""
        with self.lock:
            if self._fd is None or self._path is None:
                return None
            os.close(self._fd)
            closed = (self._path, self.overflowed)
            self._fd, self._path, self.overflowed = None, None, False
            return closed

    def orphans(self) -> list[Path]:
        """Segments of processes that are gone (checked at start, before this one appends)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            parts = path.name.split("-")
            pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
            if path != self._path and (pid is None or pid == os.getpid() or not _alive(pid)):
                found.append(path)
        return found

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The records of a segment; a last line cut by a crash is skipped (it was never
        acknowledged: its response had not been sent)."""
        rows: list[dict[str, Any]] = []
        for line in path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                log.warning("skipping a partial line at the end of %s", path)
        return rows


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
