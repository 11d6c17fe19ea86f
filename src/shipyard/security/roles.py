"""Roles and scopes: least privilege, declared per route.

Every route names the one scope it needs; a role is a set of scopes. A test walks the route
table and fails if a route other than the health probes declares none.

| role | can |
|---|---|
| admin | everything in its tenant; admins of the `default` (platform) tenant manage all tenants |
| operator | call models, roll out, work escalations and webhooks; read traces, metrics, audit |
| developer | call models, read traces, usage and status, give feedback, change configuration |
| client | call the inference routes, list models, give feedback on its tenant's traces |
| viewer | read traces, usage, status and metrics (dashboards) |
"""

from __future__ import annotations

from shipyard.errors import PermissionDenied

__all__ = ["PLATFORM_TENANT", "ROLE_SCOPES", "SCOPES", "check_scope"]

PLATFORM_TENANT = "default"

SCOPES = (
    "inference",  # chat, completions, embeddings, service invoke
    "models:read",  # list models and services
    "traces:read",
    "usage:read",
    "status:read",
    "metrics:read",
    "audit:read",
    "keys:manage",
    "tenants:manage",
    "config:write",
    "deploy",
    "feedback:write",  # give feedback on a trace
    "feedback:read",  # list individual feedback (comments, who gave it)
    "escalations:read",  # the review queue
    "escalations:manage",  # claim, answer and resolve tickets
    "webhooks:read",  # the webhook delivery log and endpoints
    "webhooks:manage",  # redeliver webhooks
)

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": frozenset(SCOPES),
    "operator": frozenset({"inference", "models:read", "traces:read", "usage:read",
                           "status:read", "metrics:read", "audit:read", "deploy",
                           "feedback:write", "feedback:read", "escalations:read",
                           "escalations:manage", "webhooks:read", "webhooks:manage"}),
    "developer": frozenset({"inference", "models:read", "traces:read", "usage:read",
                            "status:read", "config:write", "feedback:write"}),
    "client": frozenset({"inference", "models:read", "feedback:write"}),
    "viewer": frozenset({"models:read", "traces:read", "usage:read", "status:read",
                         "metrics:read"}),
}


def check_scope(role: str, scope: str) -> None:
    """Raise 403 unless `role` grants `scope`."""
    if scope not in ROLE_SCOPES.get(role, frozenset()):
        allowed = sorted(r for r, scopes in ROLE_SCOPES.items() if scope in scopes)
        raise PermissionDenied(
            f"A key with role '{role}' may not do this (it needs scope '{scope}', which roles "
            f"{', '.join(allowed)} have). Use a key with one of those roles.")
