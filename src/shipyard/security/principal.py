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

    @property
    def restricted(self) -> bool:
        """A key limited to named models and/or services may use only what it lists: a key
        listing services and no models may call no model, and the other way round."""
        return self.models is not None or self.services is not None

    def may_list_model(self, alias: str) -> bool:
        return not self.restricted or (self.models is not None and alias in self.models)

    def may_list_service(self, name: str) -> bool:
        return not self.restricted or (self.services is not None and name in self.services)

    def allowed(self) -> str:
        """What this key may use, in words (for errors and `shipyard keys create`)."""
        if not self.restricted:
            return "every model and service"
        models = f"models {', '.join(self.models)}" if self.models else "no model"
        services = (f"services {', '.join(self.services)}" if self.services
                    else "no service")
        return f"{models} and {services}"

    def may_use_model(self, alias: str) -> None:
        if not self.may_list_model(alias):
            raise PermissionDenied(
                f"This key may not use model '{alias}'; it may use {self.allowed()}. Use an "
                "allowed model, or a key created with --model for it.", param="model")

    def may_use_service(self, name: str) -> None:
        if not self.may_list_service(name):
            raise PermissionDenied(
                f"This key may not call service '{name}'; it may use {self.allowed()}. Use a "
                "key created with --service for it.", param="name")
