"""The trivial function both service targets of bench/gateway.py host."""

from __future__ import annotations

from typing import Any


def echo(data: dict[str, Any]) -> dict[str, Any]:
    return {"answer": data.get("text", "")}
