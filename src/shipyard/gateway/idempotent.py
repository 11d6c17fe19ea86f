"""`Idempotency-Key` on invocations: a client's retry gets the first answer, never a second
side effect (chat and legacy completions, embeddings, responses, service invoke).

A request without the header costs nothing here. With it, per tenant and route:

- a new key runs the request and stores its answer (a 2xx or 4xx answer; a 409, 429 or 5xx
  is not stored, so a retry runs again);
- the same key with the same body returns the stored answer, with `idempotent-replayed:
  true`, for `work.idempotency_ttl_s`;
- the same key with a different body is a 409 (`code: idempotency_key_reused`);
- the same key while the first request still runs is a 409 (`code:
  idempotency_in_progress`) with `Retry-After`.

Streams cannot be replayed: a streamed request with a key is a 400. Job creation
(`shipyard.gateway.job_routes`) maps a key to the job it started instead of to an answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shipyard.errors import Conflict, InvalidRequest, ShipyardError
from shipyard.gateway.http import error_response, read_body
from shipyard.gateway.runtime import Gateway
from shipyard.work.idempotency import HEADER, Decision, check_key, request_fingerprint

__all__ = ["REPLAYED_HEADER", "begin", "idempotent"]

REPLAYED_HEADER = "idempotent-replayed"
Endpoint = Callable[[Request], Awaitable[Response]]
# Stored answers keep these headers back (never hop-by-hop ones, cookies or a date).
_DROP = frozenset({"content-length", "date", "server", "set-cookie", "connection",
                   "transfer-encoding"})
_NOT_STORED = frozenset({409, 429})


async def begin(gw: Gateway, request: Request, tenant_id: str, key: str, body: bytes, *,
                job_id: str | None = None) -> Decision:
    """Claim `key` for this request (tenant, route, fingerprint of the body)."""
    check_key(key)
    path = request.url.path
    return await asyncio.to_thread(
        gw.idempotency.begin, tenant_id=tenant_id, scope=f"{request.method} {path}", key=key,
        request_hash=request_fingerprint(request.method, path, body), job_id=job_id)


def in_progress(key: str) -> Conflict:
    return Conflict(f"A request with header '{HEADER}' value '{key}' is still running; retry "
                    "in a few seconds to get its answer.", param=HEADER,
                    code="idempotency_in_progress", headers={"retry-after": "1"})


def idempotent(gw: Gateway, endpoint: Endpoint) -> Endpoint:
    """Wrap a route endpoint so an `Idempotency-Key` header makes it replay-safe."""

    async def wrapped(request: Request) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return await endpoint(request)
        try:
            principal = await gw.authorize(request, "inference")
            body = await read_body(request, gw.config.server.max_body_bytes)
            request._body = body  # the endpoint reads the same bytes again
            if _streams(body):
                raise InvalidRequest(f"Header '{HEADER}' cannot be used with 'stream': true "
                                     "(a stream cannot be replayed); leave one of them out.",
                                     param=HEADER)
            decision = await begin(gw, request, principal.tenant_id, key, body)
        except ShipyardError as exc:
            return error_response(exc)
        record = decision.record
        scope = {"tenant_id": record.tenant_id, "scope": record.scope, "key": record.key}
        if decision.action == "replay":
            headers = {**record.response_headers, REPLAYED_HEADER: "true"}
            return Response(record.response_body or b"", status_code=record.response_status
                            or 200, headers=headers)
        if decision.action == "in_progress":
            return error_response(in_progress(key))
        try:
            response = await endpoint(request)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(gw.idempotency.abandon, **scope))
            raise
        status = response.status_code
        if isinstance(response, StreamingResponse) or status >= 500 or status in _NOT_STORED:
            await asyncio.to_thread(gw.idempotency.abandon, **scope)
            return response
        headers = {k: v for k, v in response.headers.items() if k not in _DROP}
        await asyncio.to_thread(gw.idempotency.complete, **scope, status=status,
                                body=bytes(response.body), headers=headers)
        return response

    wrapped.__name__ = getattr(endpoint, "__name__", "endpoint")
    wrapped.__doc__ = endpoint.__doc__
    return wrapped


def _streams(body: bytes) -> bool:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("stream") is True
