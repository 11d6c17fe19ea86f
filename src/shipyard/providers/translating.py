"""The base of the providers that speak another wire format (anthropic, gemini, bedrock,
ollama): pooled HTTP, timeouts, error mapping, and the OpenAI stream they produce.

A subclass says how to build the upstream request (`prepare`), how to read a complete answer
(`answer`) and how to read a stream into OpenAI chunks (`read_stream`); this class does the
rest the same way for every kind, so failover, retries, breakers, traces and cost see an
ordinary OpenAI reply: a `chat.completion` body, or SSE bytes ending in `data: [DONE]`, with
a usage event when the caller (or failover, for exact cost) asked for one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from yarl import URL

from shipyard.config.targets import ProviderConfig
from shipyard.errors import (
    InvalidRequest,
    ShipyardError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shipyard.pipeline import Endpoint, Reply
from shipyard.providers.formats.openai import DONE, ChunkWriter, new_id
from shipyard.providers.openai import upstream_error

__all__ = ["Prepared", "StreamState", "TranslatingProvider"]


@dataclass(slots=True)
class Prepared:
    """One upstream request, ready to send, and what reading its answer needs."""

    url: str
    body: bytes
    headers: dict[str, str]
    payload: dict[str, Any]  # the OpenAI request it came from
    json_tool: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StreamState:
    """What a stream reader reports besides chunks: usage, and whether the answer ended."""

    usage: dict[str, Any] | None = None
    done: bool = False


class TranslatingProvider:
    """An HTTP upstream with its own wire format, seen by Shipyard as an OpenAI one."""

    kind: str = "translating"
    # The config key holding the credentials, named in 401/403 errors.
    credentials_key: str = "api_key"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s,
                                              sock_connect=config.connect_timeout_s)
        self._headers = {"content-type": "application/json",
                         **{k: v.get_secret_value() for k, v in config.headers.items()}}

    # -- what a kind provides -------------------------------------------------------------
    def prepare(self, payload: dict[str, Any], *, stream: bool) -> Prepared:
        raise NotImplementedError

    def answer(self, data: Any, prepared: Prepared) -> dict[str, Any]:
        raise NotImplementedError

    def read_stream(self, source: AsyncIterator[bytes], prepared: Prepared,
                    writer: ChunkWriter, state: StreamState) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError

    def error_text(self, body: bytes, headers: Any) -> tuple[str, str | None]:
        """(message, code) of an error answer."""
        raise NotImplementedError

    def sign(self, prepared: Prepared) -> None:
        """Add authentication that depends on the request itself (Bedrock's SigV4)."""

    # -- the rest is the same for every kind ------------------------------------------------
    async def start(self) -> None:
        await self._open()

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.config.max_connections,
                                             keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers,
                auto_decompress=True, skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool,
                   headers: dict[str, str] | None = None, timeout: float | None = None
                   ) -> Reply:
        if endpoint != "chat/completions":
            raise InvalidRequest(
                f"Provider '{self.name}' (kind {self.kind}) serves chat completions only, not "
                f"'/v1/{endpoint}'; route that model alias to a provider that has it.",
                param="model")
        prepared = self.prepare(payload, stream=stream)
        if headers:
            prepared.headers = {**headers, **prepared.headers}
        self.sign(prepared)
        started = time.perf_counter()
        response = await self._post(prepared, timeout)
        if stream:
            return Reply(stream=self._relay(response, prepared),
                         upstream_ms=(time.perf_counter() - started) * 1000.0)
        try:
            body = await response.read()
        except TimeoutError:
            raise UpstreamTimeout(f"The upstream '{self.name}' did not finish its answer within "
                                  f"{self.config.timeout_s:g}s.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"The upstream '{self.name}' dropped the connection "
                                      f"mid-answer ({type(exc).__name__}).") from None
        finally:
            response.release()
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"The upstream '{self.name}' answered with malformed JSON.",
                                upstream_status=200) from None
        if not isinstance(raw, dict):
            raise UpstreamError(f"The upstream '{self.name}' answered with a JSON "
                                f"{type(raw).__name__}, not an object.", upstream_status=200)
        data = self.answer(raw, prepared)
        return Reply(data=data, body=orjson.dumps(data),
                     upstream_ms=(time.perf_counter() - started) * 1000.0)

    async def _post(self, prepared: Prepared, timeout: float | None) -> aiohttp.ClientResponse:
        session = self._session or await self._open()
        limit = self._timeout
        if timeout is not None and timeout < self.config.timeout_s:
            limit = aiohttp.ClientTimeout(total=timeout, sock_connect=self.config.connect_timeout_s)
        try:
            # encoded=True: the URL is sent exactly as built (and as signed, for Bedrock).
            response = await session.post(URL(prepared.url, encoded=True), data=prepared.body,
                                          headers=prepared.headers, timeout=limit)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream '{self.name}' did not answer within "
                f"{self.config.timeout_s:g}s (providers.{self.name}.timeout_s).") from None
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamUnavailable(
                f"The upstream '{self.name}' at {prepared.url.split('?')[0]} cannot be reached "
                f"({type(exc).__name__}); check that it is running.") from None
        if response.status == 200:
            return response
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError):
            body = b""
        finally:
            response.release()
        raise self.error(response.status, body, response.headers)

    def error(self, status: int, body: bytes, headers: Any) -> ShipyardError:
        message, code = self.error_text(body, headers)
        passed = {"retry-after": headers["retry-after"]} if "retry-after" in headers else {}
        return upstream_error(self.name, status, message, code=code, headers=passed,
                              credentials=self.credentials_key)

    async def _relay(self, response: aiohttp.ClientResponse,
                     prepared: Prepared) -> AsyncIterator[bytes]:
        payload = prepared.payload
        writer = ChunkWriter(id=new_id(), model=str(payload.get("model", "")))
        state = StreamState()
        try:
            async for chunk in self.read_stream(self._body(response), prepared, writer, state):
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            if not state.done:
                raise UpstreamUnavailable(
                    f"The upstream '{self.name}' ended the stream before it was complete.")
            if state.usage is not None and (payload.get("stream_options") or {}).get(
                    "include_usage"):
                yield b"data: " + orjson.dumps(writer.usage(state.usage)) + b"\n\n"
            yield DONE
        finally:
            response.release()

    async def _body(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream '{self.name}' stalled mid-stream; the stream was ended."
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"The upstream '{self.name}' cut the stream ({type(exc).__name__})."
            ) from None


def loads_event(data: bytes, provider: str) -> dict[str, Any]:
    """One JSON event of a stream, or a clear error when it is not JSON."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable(
            f"The upstream '{provider}' sent a malformed stream event; the stream was ended."
        ) from None
    if not isinstance(obj, dict):
        raise UpstreamUnavailable(f"The upstream '{provider}' sent a stream event that is "
                                  "not a JSON object; the stream was ended.")
    return obj
