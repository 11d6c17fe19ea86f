"""Tenants and API keys: tables and the queries that read and change them.

Keys are stored only as SHA-256 digests of the full secret; the secret is shown once, at
creation. Every key belongs to a tenant, and every query here is scoped by tenant.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    false,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from shipyard.errors import InvalidRequest, NotFound
from shipyard.store.tables import metadata

__all__ = [
    "ROLES",
    "KeyRecord",
    "api_keys",
    "create_key",
    "create_tenant",
    "digest",
    "get_key",
    "list_keys",
    "list_tenants",
    "revoke_key",
    "rotate_key",
    "tenants",
]

ROLES = ("admin", "operator", "developer", "client", "viewer")
KEY_PREFIX = "sk-sy-"

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=false()),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), ForeignKey("tenants.id"), nullable=False),
    Column("name", String(256), nullable=False),
    Column("role", String(16), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("services", Text, nullable=True),  # JSON list; null = any
    Column("models", Text, nullable=True),  # JSON list; null = any
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("rotated_from", String(32), nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("max_concurrent", Integer, nullable=True),
    Index(None, "tenant_id", "created_at"),
)

_TENANT_ID = "abcdefghijklmnopqrstuvwxyz0123456789-_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant_id: str
    name: str
    role: str
    digest: str
    services: tuple[str, ...] | None
    models: tuple[str, ...] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from: str | None
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    created_by: str | None = None

    @property
    def prefix(self) -> str:
        """The visible part of the key: enough to recognise it, useless to use it."""
        return f"{KEY_PREFIX}{self.id}-…"

    def status(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def public(self) -> dict[str, Any]:
        """Everything about the key except its digest."""
        return {
            "id": self.id, "tenant": self.tenant_id, "name": self.name, "role": self.role,
            "prefix": self.prefix, "services": list(self.services) if self.services else None,
            "models": list(self.models) if self.models else None,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked_at": self.revoked_at, "rotated_from": self.rotated_from,
            "status": self.status(), "rpm": self.rpm, "tpm": self.tpm,
            "max_concurrent": self.max_concurrent, "created_by": self.created_by,
        }


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _record(row: Any) -> KeyRecord:
    m = row._mapping
    services = orjson.loads(m["services"]) if m["services"] else None
    models = orjson.loads(m["models"]) if m["models"] else None
    return KeyRecord(
        id=m["id"], tenant_id=m["tenant_id"], name=m["name"], role=m["role"],
        digest=m["digest"], services=tuple(services) if services else None,
        models=tuple(models) if models else None, created_at=_utc(m["created_at"]) or
        datetime.now(UTC), expires_at=_utc(m["expires_at"]), revoked_at=_utc(m["revoked_at"]),
        rotated_from=m["rotated_from"], rpm=m["rpm"], tpm=m["tpm"],
        max_concurrent=m["max_concurrent"], created_by=m["created_by"])


def create_tenant(engine: Engine, tenant_id: str, *, name: str | None = None) -> dict[str, Any]:
    if not tenant_id or len(tenant_id) > 64 or any(c not in _TENANT_ID for c in tenant_id):
        raise InvalidRequest(
            f"Tenant id {tenant_id!r} is not valid; use 1-64 lowercase letters, digits, '-' "
            "or '_' (e.g. 'acme' or 'team-search').", param="id")
    row = {"id": tenant_id, "name": name or tenant_id, "created_at": datetime.now(UTC),
           "disabled": False}
    try:
        with engine.begin() as connection:
            connection.execute(tenants.insert(), row)
    except IntegrityError:
        raise InvalidRequest(f"Tenant '{tenant_id}' already exists; pick another id.",
                             param="id", code="tenant_exists") from None
    return row


def ensure_tenant(engine: Engine, tenant_id: str) -> None:
    with engine.begin() as connection:
        found = connection.execute(select(tenants.c.id).where(tenants.c.id == tenant_id)).first()
    if found is None:
        create_tenant(engine, tenant_id)


def list_tenants(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(tenants).order_by(tenants.c.id)).mappings().all()
    return [{**{str(k): v for k, v in r.items()}, "created_at": _utc(r["created_at"])}
            for r in rows]


def create_key(
    engine: Engine,
    *,
    tenant_id: str,
    name: str,
    role: str,
    services: list[str] | None = None,
    models: list[str] | None = None,
    expires_in_s: float | None = None,
    created_by: str | None = None,
    rotated_from: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
) -> tuple[KeyRecord, str]:
    """Create a key; returns the record and the secret (shown once, never stored)."""
    if role not in ROLES:
        raise InvalidRequest(f"Role {role!r} is not valid; use one of {', '.join(ROLES)}.",
                             param="role")
    if expires_in_s is not None and expires_in_s <= 0:
        raise InvalidRequest(f"expires_in_s is {expires_in_s}; it must be a positive number of "
                             "seconds.", param="expires_in_s")
    exists = select(tenants.c.id).where(tenants.c.id == tenant_id)
    with engine.connect() as connection:
        if connection.execute(exists).first() is None:
            raise NotFound(f"Tenant '{tenant_id}' does not exist; create it first.",
                           param="tenant")
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
    now = datetime.now(UTC)
    row = {
        "id": key_id, "tenant_id": tenant_id, "name": name, "role": role,
        "digest": digest(secret),
        "services": orjson.dumps(services).decode() if services else None,
        "models": orjson.dumps(models).decode() if models else None,
        "created_at": now, "created_by": created_by,
        "expires_at": now + timedelta(seconds=expires_in_s) if expires_in_s else None,
        "revoked_at": None, "rotated_from": rotated_from, "rpm": rpm, "tpm": tpm,
        "max_concurrent": max_concurrent,
    }
    with engine.begin() as connection:
        connection.execute(api_keys.insert(), row)
    return get_key(engine, key_id, tenant_id=tenant_id), secret


def get_key(engine: Engine, key_id: str, *, tenant_id: str | None) -> KeyRecord:
    """One key; `tenant_id=None` only for the authenticator (it checks the secret)."""
    query = select(api_keys).where(api_keys.c.id == key_id)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise NotFound(f"There is no key '{key_id}' in this tenant; list keys with "
                       "GET /v1/admin/keys.", param="id")
    return _record(row)


def list_keys(engine: Engine, *, tenant_id: str | None) -> list[KeyRecord]:
    query = select(api_keys).order_by(api_keys.c.created_at)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    with engine.connect() as connection:
        return [_record(r) for r in connection.execute(query)]


def revoke_key(engine: Engine, key_id: str, *, tenant_id: str | None) -> KeyRecord:
    record = get_key(engine, key_id, tenant_id=tenant_id)
    if record.revoked_at is None:
        with engine.begin() as connection:
            connection.execute(update(api_keys).where(api_keys.c.id == key_id)
                               .values(revoked_at=datetime.now(UTC)))
    return get_key(engine, key_id, tenant_id=tenant_id)


def rotate_key(engine: Engine, key_id: str, *, tenant_id: str | None, overlap_s: float,
               created_by: str | None = None) -> tuple[KeyRecord, str, KeyRecord]:
    """A new key with the same tenant, role and limits; the old one keeps working for
    `overlap_s` seconds (then expires). Returns (new record, new secret, old record)."""
    if overlap_s < 0:
        raise InvalidRequest(f"overlap_s is {overlap_s}; it must be 0 or more seconds.",
                             param="overlap_s")
    old = get_key(engine, key_id, tenant_id=tenant_id)
    if old.status() != "active":
        raise InvalidRequest(f"Key '{key_id}' is {old.status()}; only an active key can be "
                             "rotated. Create a new key instead.", param="id")
    new, secret = create_key(
        engine, tenant_id=old.tenant_id, name=old.name, role=old.role,
        services=list(old.services) if old.services else None,
        models=list(old.models) if old.models else None, created_by=created_by,
        rotated_from=old.id, rpm=old.rpm, tpm=old.tpm, max_concurrent=old.max_concurrent)
    ends = datetime.now(UTC) + timedelta(seconds=overlap_s)
    if old.expires_at is None or old.expires_at > ends:
        with engine.begin() as connection:
            connection.execute(update(api_keys).where(api_keys.c.id == old.id)
                               .values(expires_at=ends))
    return new, secret, get_key(engine, old.id, tenant_id=old.tenant_id)
