"""The gateway: ASGI app factory, OpenAI-compatible routes, service and admin routes."""

from __future__ import annotations

from shipyard.gateway.app import create_app

__all__ = ["create_app"]
