"""`shipyard tenants …` and `shipyard keys …`: manage tenants and API keys in the store.

These work on the store directly (whoever can read the config and reach the database is an
operator); the same actions exist in the admin API for remote use.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail, open_store
from shipyard.errors import ShipyardError
from shipyard.security.roles import PLATFORM_TENANT

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from shipyard.store import tenants as store

tenants_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list, revoke and rotate API keys.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
StoreOpt = Annotated[str | None, typer.Option("--store-url",
                     help="Use this store instead of the config's store.url.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def actor() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def _print(data: Any) -> None:
    console.print_json(orjson.dumps(data, option=orjson.OPT_UTC_Z).decode())


def _show_secret(record: store.KeyRecord, secret: str) -> None:
    from shipyard.security.principal import Principal

    may = Principal(record.tenant_id, record.id, record.role, services=record.services,
                    models=record.models).allowed()
    console.print(f"Created key [bold]{escape(record.id)}[/] ({escape(record.role)}) for "
                  f"tenant '{escape(record.tenant_id)}'; it may use {escape(may)}. The secret "
                  "is shown once; store it now:", highlight=False)
    print(secret)


@tenants_app.command("create")
def tenants_create(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id: lowercase letters, digits, - _")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Create a tenant (an organisation, team or customer)."""
    from shipyard.store import tenants as store

    engine = open_store(config, store_url, migrate=True)
    try:
        store.create_tenant(engine, tenant_id, name=name)
    except ShipyardError as exc:
        raise fail(exc) from None
    _audit(engine, tenant_id, "tenant.create", tenant_id, None)
    console.print(f"Created tenant '{tenant_id}'.")


@tenants_app.command("list")
def tenants_list(config: ConfigOpt = None, store_url: StoreOpt = None,
                 as_json: JsonOpt = False) -> None:
    """List tenants."""
    from shipyard.store import tenants as store

    rows = store.list_tenants(open_store(config, store_url, migrate=True))
    if as_json:
        _print(rows)
        return
    table = Table(show_edge=False)
    for column in ("id", "name", "created", "disabled"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["id"], r["name"], f"{r['created_at']:%Y-%m-%d %H:%M}",
                      "yes" if r["disabled"] else "")
    console.print(table)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for.")] = "admin",
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")] = PLATFORM_TENANT,
    role: Annotated[str, typer.Option(
        help="admin | operator | developer | client | viewer")] = "client",
    model: Annotated[list[str] | None, typer.Option(
        help="Restrict to this model alias (repeatable).")] = None,
    service: Annotated[list[str] | None, typer.Option(
        help="Restrict to this service (repeatable).")] = None,
    expires_in: Annotated[float | None, typer.Option(
        help="Seconds until the key expires.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute for this key.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute for this key.")] = None,
    bootstrap: Annotated[bool, typer.Option(
        help="Create the first admin key of the platform tenant (refused when one exists; "
        "add --force to make another).")] = False,
    force: Annotated[bool, typer.Option(help="With --bootstrap: even if admins exist.")] = False,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Create an API key; its secret is printed once and never stored.

    Example: shipyard keys create --tenant acme --name support-bot --role client --model demo
    """
    from shipyard.store import tenants as store

    engine = open_store(config, store_url, migrate=True)
    if bootstrap:
        refuse_second_bootstrap(engine, force=force)
        tenant, role = PLATFORM_TENANT, "admin"
        name = name if name != "admin" else "bootstrap admin"
    try:
        record, secret = store.create_key(
            engine, tenant_id=tenant, name=name, role=role, services=service or None,
            models=model or None, expires_in_s=expires_in, created_by=actor(), rpm=rpm,
            tpm=tpm)
    except ShipyardError as exc:
        raise fail(exc) from None
    _audit(engine, tenant, "key.create", record.id, {"role": role, "name": name})
    _show_secret(record, secret)


def _admins(engine: Engine) -> list[store.KeyRecord]:
    from shipyard.store import tenants as store

    return [k for k in store.list_keys(engine, tenant_id=PLATFORM_TENANT)
            if k.role == "admin" and k.status() == "active"]


def has_admin(engine: Engine) -> bool:
    return bool(_admins(engine))


def refuse_second_bootstrap(engine: Engine, *, force: bool) -> None:
    admins = _admins(engine)
    if admins and not force:
        raise fail(f"The platform tenant already has {len(admins)} active admin key(s) "
                   f"({', '.join(k.id for k in admins)}); use one of them, or add --force.")


def bootstrap_admin(engine: Engine) -> None:
    """Create and print the first admin key of the platform tenant."""
    from shipyard.store import tenants as store

    record, secret = store.create_key(engine, tenant_id=PLATFORM_TENANT,
                                      name="bootstrap admin", role="admin", created_by=actor())
    _audit(engine, PLATFORM_TENANT, "key.create", record.id, {"role": "admin"})
    _show_secret(record, secret)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List keys (never their secrets)."""
    from shipyard.store import tenants as store

    records = store.list_keys(open_store(config, store_url, migrate=True), tenant_id=tenant)
    if as_json:
        _print([r.public() for r in records])
        return
    table = Table(show_edge=False)
    for column in ("id", "tenant", "name", "role", "status", "expires", "restricted to"):
        table.add_column(column)
    for r in records:
        limits = ", ".join([*(r.models or ()), *(r.services or ())])
        table.add_row(r.id, r.tenant_id, r.name, r.role, r.status(),
                      f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "", limits)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (see 'shipyard keys list').")],
    tenant: Annotated[str | None, typer.Option(help="The key's tenant.")] = None,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Revoke a key at once (gateways stop accepting it within 5 seconds)."""
    from shipyard.store import tenants as store

    engine = open_store(config, store_url, migrate=True)
    try:
        record = store.revoke_key(engine, key_id, tenant_id=tenant)
    except ShipyardError as exc:
        raise fail(exc) from None
    _audit(engine, record.tenant_id, "key.revoke", key_id, None)
    console.print(f"Revoked key {key_id}.")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key to replace.")],
    overlap: Annotated[float, typer.Option(
        help="Seconds the old key keeps working, so clients can switch.")] = 3600.0,
    tenant: Annotated[str | None, typer.Option(help="The key's tenant.")] = None,
    config: ConfigOpt = None,
    store_url: StoreOpt = None,
) -> None:
    """Replace a key: a new secret now, the old one expires after --overlap seconds."""
    from shipyard.store import tenants as store

    engine = open_store(config, store_url, migrate=True)
    try:
        new, secret, old = store.rotate_key(engine, key_id, tenant_id=tenant,
                                            overlap_s=overlap, created_by=actor())
    except ShipyardError as exc:
        raise fail(exc) from None
    _audit(engine, new.tenant_id, "key.rotate", key_id, {"new_key": new.id})
    console.print(f"Key {old.id} keeps working until {old.expires_at:%Y-%m-%d %H:%M:%S} UTC.")
    _show_secret(new, secret)


@keys_app.command("encryption-key")
def keys_encryption_key() -> None:
    """Print a new Fernet key for traces.encryption_keys (store it as a secret)."""
    from shipyard.security.crypto import generate_key

    try:
        print(generate_key())
    except ShipyardError as exc:
        raise fail(exc) from None


def _audit(engine: Engine, tenant: str, action: str, target: str,
           details: dict[str, Any] | None) -> None:
    """Record the action in the audit log."""
    from shipyard.security.audit import AuditLog

    AuditLog(engine).append(tenant_id=tenant, actor=actor(), action=action, target=target,
                            details=details)
