"""Stored Responses API answers: one row per `POST /v1/responses` with `store: true`, read by
`GET /v1/responses/{id}` and continued by `previous_response_id` — always within a tenant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, delete, insert, select

from shipyard.store.tables import responses

__all__ = ["delete_response", "get_response", "save_response"]


def save_response(engine: Engine, *, tenant_id: str, response: dict[str, Any],
                  conversation: list[dict[str, Any]], trace_id: str | None) -> None:
    with engine.begin() as connection:
        connection.execute(insert(responses).values(
            id=response["id"], tenant_id=tenant_id, created_at=datetime.now(UTC),
            model=str(response.get("model", ""))[:128],
            previous_id=response.get("previous_response_id"), trace_id=trace_id,
            conversation=orjson.dumps(conversation).decode(),
            response=orjson.dumps(response).decode()))


def get_response(engine: Engine, response_id: str, *,
                 tenant_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(the response, its conversation), or None when this tenant has no such response."""
    with engine.connect() as connection:
        row = connection.execute(select(responses.c.response, responses.c.conversation).where(
            responses.c.id == response_id, responses.c.tenant_id == tenant_id)).first()
    if row is None:
        return None
    return orjson.loads(row.response), orjson.loads(row.conversation)


def delete_response(engine: Engine, response_id: str, *, tenant_id: str) -> bool:
    with engine.begin() as connection:
        done = connection.execute(delete(responses).where(
            responses.c.id == response_id, responses.c.tenant_id == tenant_id))
    return bool(done.rowcount)
