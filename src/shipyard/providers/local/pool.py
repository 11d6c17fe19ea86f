"""Worker processes of a `local` provider, seen from the gateway: start, talk, queue, restart.

Each `Worker` is one `python -m shipyard.providers.local.worker` child that answers one
request at a time over its standard input and output (the protocol is in `worker.py`).
`WorkerPool` hands out idle workers: at most `max_queue` requests wait for one, for at most
`queue_timeout_s`, and the rest are refused at once with a 503 and Retry-After. A worker that
dies (a native crash in llama.cpp) fails only the request it was serving and is started again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import signal
import sys
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from shipyard.errors import CapacityError, ConfigError, UpstreamUnavailable

__all__ = ["Worker", "WorkerError", "WorkerPool"]

log = logging.getLogger("shipyard.providers.local")
_LINE_LIMIT = 64 * 1024 * 1024  # one event (a long answer, many embeddings) is one line
_END = object()


class WorkerError(Exception):
    """The worker refused or failed one request; `status` is 400 (the request) or 500."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class Worker:
    """One model worker process."""

    def __init__(self, provider: str, settings: dict[str, Any], *, index: int,
                 load_timeout_s: float) -> None:
        self.provider = provider
        self.settings = settings
        self.index = index
        self.load_timeout_s = load_timeout_s
        self.info: dict[str, Any] = {}
        self.process: asyncio.subprocess.Process | None = None
        self._inboxes: dict[int, asyncio.Queue[Any]] = {}
        self._next_id = 0
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _describe_exit(self) -> str:
        code = self.process.returncode if self.process is not None else None
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        tail = " | ".join(self._stderr)
        return f"{how}{f' (last output: {tail[-400:]})' if tail else ''}"

    async def start(self) -> None:
        """Start the process and wait until its model is loaded."""
        self._stderr.clear()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shipyard.providers.local.worker",
            orjson.dumps(self.settings).decode(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=_LINE_LIMIT)
        assert self.process.stdout is not None and self.process.stderr is not None
        self._tasks = [asyncio.create_task(self._log_stderr(self.process.stderr))]
        try:
            async with asyncio.timeout(self.load_timeout_s):
                line = await self.process.stdout.readline()
        except TimeoutError:
            await self.stop()
            raise ConfigError(
                f"The model of provider '{self.provider}' did not load within "
                f"{self.load_timeout_s:g}s (providers.{self.provider}.load_timeout_s).") from None
        message = orjson.loads(line) if line.strip() else {}
        if "ready" not in message:
            await self.process.wait()
            why = message.get("failed") or self._describe_exit()
            raise ConfigError(f"The model of provider '{self.provider}' failed to load: {why}. "
                              f"Check providers.{self.provider}.model_path.")
        self.info = message["ready"]
        self._tasks.append(asyncio.create_task(self._read(self.process.stdout)))
        log.info("local model worker %s.%d ready: %s (pid %s)", self.provider, self.index,
                 self.info.get("model"), self.process.pid)

    async def _log_stderr(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line)
                log.info("local worker %s.%d: %s", self.provider, self.index, line)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            inbox = self._inboxes.get(message.get("id"))
            if inbox is not None:  # events of a cancelled request have no inbox: dropped
                inbox.put_nowait(message)
        # The process is gone: every request it had fails.
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                await self.process.wait()
        for inbox in self._inboxes.values():
            inbox.put_nowait(_END)

    async def request(self, endpoint: str, body: dict[str, Any],
                      stream: bool) -> tuple[int, AsyncGenerator[tuple[str, Any], None]]:
        """Send one request; returns its id and its events (`chunk`s, then `result` or end)."""
        if not self.alive or self.process is None or self.process.stdin is None:
            raise UpstreamUnavailable(
                f"The model worker of provider '{self.provider}' is not running.")
        self._next_id += 1
        rid = self._next_id
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._inboxes[rid] = inbox
        self.process.stdin.write(orjson.dumps(
            {"id": rid, "endpoint": endpoint, "body": body, "stream": stream}) + b"\n")
        try:
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self._inboxes.pop(rid, None)
            raise UpstreamUnavailable(
                f"The model worker of provider '{self.provider}' {self._describe_exit()}; "
                "it is being restarted.") from None
        return rid, self._events(rid, inbox)

    async def _events(self, rid: int, inbox: asyncio.Queue[Any]
                      ) -> AsyncGenerator[tuple[str, Any], None]:
        try:
            while True:
                message = await inbox.get()
                if message is _END:
                    raise UpstreamUnavailable(
                        f"The model worker of provider '{self.provider}' "
                        f"{self._describe_exit()} while answering; it is being restarted. "
                        "Retry the request.")
                if "error" in message:
                    error = message["error"]
                    raise WorkerError(int(error.get("status", 500)), str(error.get("message")),
                                      error.get("param"), error.get("code"))
                if message.get("end"):
                    return
                for kind in ("chunk", "result"):
                    if kind in message:
                        yield (kind, message[kind])
        finally:
            self._inboxes.pop(rid, None)

    def cancel(self, rid: int) -> None:
        """Stop a request between two tokens (its remaining events are dropped)."""
        self._inboxes.pop(rid, None)
        if self.alive and self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
                self.process.stdin.write(orjson.dumps({"cancel": rid}) + b"\n")

    async def stop(self) -> None:
        """Close the worker's input (it exits), then make sure it is gone."""
        process = self.process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                with contextlib.suppress(Exception):
                    process.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []


class WorkerPool:
    """`parallel` workers and a bounded queue of requests waiting for one."""

    def __init__(self, provider: str, settings: dict[str, Any], *, parallel: int,
                 max_queue: int, queue_timeout_s: float, load_timeout_s: float) -> None:
        self.provider = provider
        self.workers = [Worker(provider, settings, index=i, load_timeout_s=load_timeout_s)
                        for i in range(parallel)]
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self.waiting = 0
        self.refused = 0
        self._restarts: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self.workers))
        for worker in self.workers:
            self._idle.put_nowait(worker)

    @property
    def busy(self) -> int:
        return len(self.workers) - self._idle.qsize()

    def _refuse(self, why: str) -> CapacityError:
        self.refused += 1
        retry = max(1, math.ceil(min(self.queue_timeout_s, 30.0)))
        return CapacityError(
            f"The local model of provider '{self.provider}' is at capacity ({why}); retry "
            f"after {retry} s, or raise providers.{self.provider}.parallel or max_queue.",
            headers={"retry-after": str(retry)})

    async def acquire(self, timeout: float | None = None) -> Worker:
        """An idle worker; waits in a bounded queue, then refuses with 503."""
        if self._idle.empty() and self.waiting >= self.max_queue:
            raise self._refuse(f"{self.busy} generating, {self.waiting} waiting")
        wait = self.queue_timeout_s if timeout is None else min(self.queue_timeout_s, timeout)
        self.waiting += 1
        try:
            async with asyncio.timeout(wait):
                worker = await self._idle.get()
        except TimeoutError:
            raise self._refuse(f"no worker was free within {wait:g}s") from None
        finally:
            self.waiting -= 1
        if not worker.alive:
            try:
                await self._restart(worker)
            except BaseException as exc:
                self._idle.put_nowait(worker)  # keep the slot; the next caller tries again
                if isinstance(exc, Exception):
                    raise UpstreamUnavailable(
                        f"The model worker of provider '{self.provider}' could not be "
                        f"restarted: {exc}") from None
                raise
        return worker

    def release(self, worker: Worker) -> None:
        if worker.alive:
            self._idle.put_nowait(worker)
            return
        task = asyncio.create_task(self._restart_then_release(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, worker: Worker) -> None:
        log.warning("local model worker %s.%d %s; restarting it", self.provider, worker.index,
                    worker._describe_exit())
        await worker.stop()
        worker.restarts += 1
        await worker.start()

    async def _restart_then_release(self, worker: Worker) -> None:
        try:
            await self._restart(worker)
        except Exception:
            log.exception("local model worker %s.%d could not be restarted", self.provider,
                          worker.index)
        self._idle.put_nowait(worker)  # if still dead, the next acquire tries again

    async def close(self) -> None:
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
