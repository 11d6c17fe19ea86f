"""Reading request bodies within limits, and writing JSON and error responses."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidJSON, InvalidRequest, PayloadTooLarge, ShipyardError
from shipyard.providers.formats.anthropic import ERROR_TYPES as ANTHROPIC_ERROR_TYPES
from shipyard.resilience.admission import BATCH, INTERACTIVE

__all__ = [
    "ANTHROPIC_PREFIX",
    "CONVERSATION_HEADER",
    "DEFAULT_JSON_DEPTH",
    "anthropic_error_body",
    "conversation_of",
    "error_response",
    "internal_error",
    "json_depth_exceeds",
    "json_response",
    "raw_error_response",
    "read_json",
    "request_priority",
]

log = logging.getLogger("shipyard.gateway")
DEFAULT_JSON_DEPTH = 64  # server.max_json_depth's default
CONVERSATION_HEADER = "x-shipyard-conversation"
_CONVERSATION = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def conversation_of(request: Request) -> str | None:
    """The `x-shipyard-conversation` header (a conversation id the caller chooses), checked."""
    value = request.headers.get(CONVERSATION_HEADER)
    if value is not None and not _CONVERSATION.match(value):
        raise InvalidRequest(
            f"Header '{CONVERSATION_HEADER}' is {value[:40]!r}; use 1 to 128 letters, digits "
            "and . _ : - (a conversation id you choose).", param=CONVERSATION_HEADER,
            code="invalid_conversation")
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"The request body is {int(declared)} bytes; the limit is {limit} bytes "
            "(server.max_body_bytes). Send a smaller request."
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"The request body exceeds the limit of {limit} bytes (server.max_body_bytes). "
                "Send a smaller request."
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int, *,
                    max_depth: int = DEFAULT_JSON_DEPTH) -> tuple[dict[str, Any], int]:
    """Read and parse a JSON object body; returns the object and its size in bytes.

    Bodies nested deeper than `max_depth` (`server.max_json_depth`) are refused here, once for
    every route, so nothing downstream (serialisers, guards, upstreams) meets them.
    """
    body = await read_body(request, limit)
    if not body.strip():
        raise InvalidJSON(
            "The request body is empty; send a JSON object with Content-Type: application/json."
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):
            raise _too_deep(max_depth) from None
        raise InvalidJSON(
            f"The request body is not valid JSON ({exc.msg} at position {exc.pos}); "
            "send a JSON object with Content-Type: application/json."
        ) from None
    if not isinstance(data, dict):
        raise InvalidJSON(
            f"The request body must be a JSON object, not a JSON {_json_type(data)}."
        )
    # Cheap test first: a body with few brackets cannot be deep (strings may hold brackets,
    # which only makes this count larger), so most requests skip the walk.
    if body.count(b"{") + body.count(b"[") > max_depth and json_depth_exceeds(data, max_depth):
        raise _too_deep(max_depth)
    return data, len(body)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when objects and arrays in `value` nest more than `limit` levels deep (the
    outermost one is level 1). Iterative: no recursion limit to hit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _too_deep(limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"The request body nests JSON objects and arrays more than {limit} levels deep; the "
        f"limit is {limit} (server.max_json_depth). Send a flatter body.",
        code="json_too_deep")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


def request_priority(request: Request) -> int:
    """`x-shipyard-priority: interactive` (default) or `batch`; batch waits behind interactive."""
    value = request.headers.get("x-shipyard-priority")
    if value is None or value == "interactive":
        return INTERACTIVE
    if value == "batch":
        return BATCH
    raise InvalidRequest(f"Header 'x-shipyard-priority' is {value!r}; it must be 'interactive' "
                         "or 'batch'.", param="x-shipyard-priority")


def raw_error_response(exc: ShipyardError, *, path: str = "") -> bytes:
    """`error_response` as the bytes of an HTTP/1.1 answer (status line, headers, body), for
    a server that writes it to the socket itself (`gateway.protocol`)."""
    body = orjson.dumps(anthropic_error_body(exc) if path.startswith(ANTHROPIC_PREFIX)
                        else exc.to_dict())
    reason = HTTPStatus(exc.status).phrase
    lines = [f"HTTP/1.1 {exc.status} {reason}", "content-type: application/json",
             f"content-length: {len(body)}",
             *(f"{name}: {value}" for name, value in exc.headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None,
                  body: bytes | None = None) -> Response:
    return Response(
        body if body is not None else orjson.dumps(data),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def internal_error(exc: BaseException, request_id: str | None = None) -> ShipyardError:
    """The one answer to a bug of ours: logged with its traceback, never shown to the caller."""
    where = f" with request id {request_id}" if request_id else ""
    log.error("internal error%s", where, exc_info=exc)
    return ShipyardError(
        f"Shipyard hit an internal error ({type(exc).__name__}); it has been logged{where}. "
        "Retry, and report it if it persists.")


# The Anthropic-format front door: its errors have Anthropic's shape.
ANTHROPIC_PREFIX = "/v1/messages"


def anthropic_error_body(exc: ShipyardError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`, as the Anthropic SDK reads it."""
    kind = ANTHROPIC_ERROR_TYPES.get(exc.status)
    if kind is None:
        kind = "invalid_request_error" if 400 <= exc.status < 500 else "api_error"
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_response(exc: ShipyardError, *, headers: dict[str, str] | None = None,
                   path: str = "") -> Response:
    """The one place errors become HTTP answers: the OpenAI error shape, or Anthropic's on
    the Anthropic-format routes (`path` under /v1/messages)."""
    merged = {**exc.headers, **(headers or {})}
    if path.startswith(ANTHROPIC_PREFIX):
        return json_response(anthropic_error_body(exc), status=exc.status, headers=merged)
    return json_response(exc.to_dict(), status=exc.status, headers=merged)
