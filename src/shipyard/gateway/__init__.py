"""The gateway: ASGI app factory, OpenAI-compatible routes, service routes, the pipeline."""

from __future__ import annotations

from shipyard.gateway.app import create_app
from shipyard.gateway.pipeline import Call, Handler, Stage

__all__ = ["Call", "Handler", "Stage", "create_app"]
