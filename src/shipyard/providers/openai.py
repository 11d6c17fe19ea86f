"""`kind: openai` — any OpenAI-compatible HTTP upstream, over pooled keep-alive connections.

Streams pass through untouched: bytes are forwarded as they arrive, never buffered.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from shipyard.config.targets import ProviderConfig
from shipyard.errors import (
    ClientError,
    ShipyardError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from shipyard.pipeline import Endpoint, Reply

__all__ = ["OpenAIProvider", "UpstreamRejected", "error_from_upstream", "upstream_error"]

# x-shipyard-confidence: a score escalation reads (models.ALIAS.escalation.min_confidence).
_PASS_HEADERS = ("retry-after", "x-request-id", "openai-processing-ms",
                 "x-shipyard-confidence")


class UpstreamRejected(ClientError):
    """The upstream refused the request as invalid; its status (400/413/422/429) is kept."""

    def __init__(self, message: str, *, status: int, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.status = status
        if status == 429:
            self.type = "rate_limit_error"


def _upstream_message(body: bytes) -> tuple[str, str | None, str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:300].decode("utf-8", "replace").strip()
        return (text or "(empty body)", None, None)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return (str(error.get("message") or error), error.get("param"), error.get("code"))
    if isinstance(error, str):
        return (error, None, None)
    return (str(data)[:300], None, None)


def error_from_upstream(provider: str, status: int, body: bytes,
                        headers: dict[str, str]) -> ShipyardError:
    """Map an upstream error answer to the error Shipyard gives its caller."""
    message, param, code = _upstream_message(body)
    return upstream_error(provider, status, message, param=param, code=code, headers=headers)


def upstream_error(provider: str, status: int, message: str, *, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None,
                   credentials: str = "api_key") -> ShipyardError:
    """The error for an upstream's HTTP `status`, keeping the upstream's own `message`.

    400/413/422 and 429 keep their status (the caller can fix or slow down); bad credentials
    and unknown models are the operator's to fix (502, naming the key); 408/504 are timeouts;
    anything else is a retryable upstream failure.
    """
    passed = {k: v for k, v in (headers or {}).items() if k.lower() == "retry-after"}
    if status in (400, 413, 422):
        return UpstreamRejected(f"The upstream rejected the request: {message}",
                                status=status, param=param, code=code)
    if status == 429:
        return UpstreamRejected(
            f"The upstream '{provider}' is rate limiting requests: {message}. Retry after "
            "the time in the Retry-After header.",
            status=429, code=code or "rate_limit_exceeded", headers=passed)
    if status in (401, 403):
        return UpstreamError(
            f"The upstream '{provider}' rejected Shipyard's credentials (HTTP {status}): "
            f"{message}. Check providers.{provider}.{credentials}.", upstream_status=status)
    if status == 404:
        return UpstreamError(
            f"The upstream '{provider}' answered 404: {message}. Check the model name "
            f"(models.ALIAS.model) and providers.{provider}.base_url.", upstream_status=status)
    if status in (408, 504):
        return UpstreamTimeout(f"The upstream '{provider}' timed out (HTTP {status}): "
                               f"{message}", upstream_status=status, headers=passed)
    return UpstreamError(f"The upstream '{provider}' failed with HTTP {status}: {message}",
                         upstream_status=status, headers=passed)


class OpenAIProvider:
    """HTTP client for one OpenAI-compatible upstream."""

    kind = "openai"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.base_url = (config.base_url or "").rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._headers = {
            "content-type": "application/json",
            **{k: v.get_secret_value() for k, v in config.headers.items()},
        }
        self._query = config.query or None
        if config.api_key is not None:
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._timeout = aiohttp.ClientTimeout(
            total=config.timeout_s, sock_connect=config.connect_timeout_s
        )

    def url(self, endpoint: Endpoint, payload: dict[str, Any]) -> str:
        """Where this endpoint lives upstream (Azure puts the deployment in the path)."""
        return f"{self.base_url}/{endpoint}"

    async def start(self) -> None:
        await self._open()

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_connections, keepalive_timeout=60, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers,
                auto_decompress=True, skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        endpoint: Endpoint,
        payload: dict[str, Any],
        *,
        stream: bool,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        session = self._session or await self._open()
        url = self.url(endpoint, payload)
        started = time.perf_counter()
        limit = self._timeout
        if timeout is not None and timeout < self.config.timeout_s:
            limit = aiohttp.ClientTimeout(total=timeout, sock_connect=self.config.connect_timeout_s)
        try:
            response = await session.post(url, data=orjson.dumps(payload), headers=headers,
                                          params=self._query, timeout=limit)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream '{self.name}' did not answer within "
                f"{self.config.timeout_s:g}s (providers.{self.name}.timeout_s)."
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamUnavailable(
                f"The upstream '{self.name}' at {self.base_url} cannot be reached "
                f"({type(exc).__name__}); check that it is running."
            ) from None
        passed = {k: v for k in _PASS_HEADERS if (v := response.headers.get(k)) is not None}
        if response.status != 200:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                body = b""
            finally:
                response.release()
            raise error_from_upstream(self.name, response.status, body, passed)
        if stream:
            return Reply(stream=self._iter_stream(response), headers=passed,
                         upstream_ms=(time.perf_counter() - started) * 1000.0)
        try:
            body = await response.read()
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream '{self.name}' did not finish its answer within "
                f"{self.config.timeout_s:g}s."
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"The upstream '{self.name}' dropped the connection mid-answer "
                f"({type(exc).__name__})."
            ) from None
        finally:
            response.release()
        return Reply(body=body, headers=passed,
                     upstream_ms=(time.perf_counter() - started) * 1000.0)

    async def _iter_stream(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
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
        finally:
            response.release()
