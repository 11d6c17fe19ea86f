"""A bounded on-disk queue for traces while the store is down; replayed in order later.

Each failed batch becomes one segment file (JSON lines) named by time and sequence, so
lexical order is arrival order. A replaying process claims a segment by renaming it, so
several workers sharing the folder never replay the same segment twice. Segments left over
from a previous run are replayed on the next start. Beyond `max_bytes`, batches are counted
as lost and logged — never silently dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Spool", "revive"]

log = logging.getLogger("shipyard.traces")
_DATETIMES = ("started_at", "ended_at")
REJECTED = "rejected.jsonl"


class Spool:
    def __init__(self, folder: str | Path, *, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._seq = count()
        self._lock = threading.Lock()
        self.spooled = 0
        self.replayed = 0
        self.lost = 0

    def _segments(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        # rejected.jsonl (rows the store refused twice, kept for a person) is not a segment:
        # replaying it would reject them again, forever.
        return sorted(p for p in self.folder.iterdir()
                      if p.suffix == ".jsonl" and p.name != REJECTED)

    @property
    def bytes(self) -> int:
        total = 0
        for path in self._segments():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue  # claimed by another worker meanwhile
        return total

    def pending(self) -> bool:
        return bool(self._segments())

    def append(self, rows: list[dict[str, Any]]) -> bool:
        """Write one batch as a segment; False (rows counted as lost) when over the limit."""
        # default=str: a span attribute of any type (a stage of the user's) never fails a batch
        data = b"".join(orjson.dumps(row, default=str) + b"\n" for row in rows)
        with self._lock:
            if self.bytes + len(data) > self.max_bytes:
                self.lost += len(rows)
                log.error(
                    "trace spool is full (%d bytes, traces.spool_max_bytes); %d traces lost. "
                    "Bring the store back or raise the limit.", self.max_bytes, len(rows))
                return False
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):08d}"
            temporary = self.folder / f"{name}.tmp"
            temporary.write_bytes(data)
            temporary.rename(self.folder / f"{name}.jsonl")  # appears whole, never half-written
            self.spooled += len(rows)
        return True

    def claim_oldest(self) -> tuple[Path, list[dict[str, Any]]] | None:
        """Take the oldest segment for replay: (claimed path, rows), or None when empty."""
        for path in self._segments():
            claimed = path.with_suffix(f".replaying-{os.getpid()}")
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another worker took it
            rows = []
            for line in claimed.read_bytes().split(b"\n"):
                if not line.strip():
                    continue
                try:
                    rows.append(revive(orjson.loads(line)))
                except orjson.JSONDecodeError:
                    # Only a journal segment's last line can be cut (the process was killed
                    # mid-append, before that request was answered).
                    log.warning("skipping an incomplete line in %s", path.name)
            return claimed, rows
        return None

    def done(self, claimed: Path, rows: int) -> None:
        claimed.unlink(missing_ok=True)
        self.replayed += rows

    def give_back(self, claimed: Path) -> None:
        """Replay failed: put the segment back, keeping its place in the order."""
        original = claimed.with_suffix(".jsonl")
        claimed.rename(original)

    def recover_claims(self) -> None:
        """Segments claimed by a process that died mid-replay go back in the queue."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if ".replaying-" in path.name:
                pid = path.name.rsplit("-", 1)[-1]
                if not pid.isdigit() or not _alive(int(pid)) or int(pid) == os.getpid():
                    path.rename(path.with_suffix(".jsonl"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def revive(row: dict[str, Any]) -> dict[str, Any]:
    """A record read back from JSON (spool or journal) as the writer takes it."""
    row.setdefault("trace_id", None)  # spooled by a version before traces.trace_id
    for key in _DATETIMES:
        value = row.get(key)
        if isinstance(value, str):
            row[key] = datetime.fromisoformat(value)
    return row
