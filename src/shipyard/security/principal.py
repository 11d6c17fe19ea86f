"""The principal: who is calling, for which tenant, with which role and restrictions."""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.errors import PermissionDenied
from shipyard.security.roles import PLATFORM_TENANT

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant, a key id (never the secret), a role and restrictions."""

    tenant_id: str
    key_id: str | None
    role: str = "admin"
    subject: str | None = None
    services: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    @property
    def platform_admin(self) -> bool:
        return self.role == "admin" and self.tenant_id == PLATFORM_TENANT

    def may_use_model(self, alias: str) -> None:
        if self.models is not None and alias not in self.models:
            raise PermissionDenied(
                f"This key may not use model '{alias}'; it is limited to "
                f"{', '.join(self.models)}. Use an allowed model or another key.",
                param="model")

    def may_use_service(self, name: str) -> None:
        if self.services is not None and name not in self.services:
            raise PermissionDenied(
                f"This key may not call service '{name}'; it is limited to "
                f"{', '.join(self.services)}. Use another key.", param="name")
