"""Routes that declare the scope they need (`None` only for the health probes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["PUBLIC_PATHS", "ScopedRoute"]

# The only routes anyone may call without credentials: the health probes, and the dashboard's
# login form and static assets (every other /ui page needs a session).
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/ui/login", "/ui/static/{name}"})


class ScopedRoute(Route):
    """A route with the scope a caller's role must grant (enforced by its endpoint through
    `Gateway.authorize`; the route table test checks every route declares one)."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]], *,
                 methods: list[str], scope: str | None, **kwargs: Any) -> None:
        super().__init__(path, endpoint, methods=methods, **kwargs)
        self.scope = scope
