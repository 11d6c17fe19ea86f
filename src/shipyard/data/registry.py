"""Dataset versions in the store: register a version's manifest, list, look one up.

A reference is `name` (the latest version), `name@3` / `name@v3`, or a version id (or a unique
prefix of one).

>>> registry = DatasetRegistry(engine)  # doctest: +SKIP
>>> registry.get("customers@2")["content_hash"]  # doctest: +SKIP
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from shipyard.errors import NotFound, ShipyardError
from shipyard.store.tables import datasets

__all__ = ["DatasetRegistry"]

_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:@v?(?P<version>\d+))?$")


def _row(row: Any) -> dict[str, Any]:
    data = {str(k): v for k, v in row._mapping.items()}
    data["manifest"] = orjson.loads(data["manifest"])
    created = data["created_at"]
    if created.tzinfo is None:  # SQLite returns naive datetimes
        data["created_at"] = created.replace(tzinfo=UTC)
    return data


class DatasetRegistry:
    """Versions of named datasets, stored in the `datasets` table."""

    def __init__(self, engine: Engine, *, tenant_id: str = "default") -> None:
        self.engine = engine
        self.tenant_id = tenant_id

    def latest(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(datasets).where(datasets.c.tenant_id == self.tenant_id,
                                       datasets.c.name == name)
                .order_by(datasets.c.version.desc()).limit(1)).first()
        return None if row is None else _row(row)

    def next_version(self, name: str) -> int:
        with self.engine.connect() as conn:
            top = conn.execute(select(func.max(datasets.c.version)).where(
                datasets.c.tenant_id == self.tenant_id, datasets.c.name == name)).scalar()
        return int(top or 0) + 1

    def register(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Insert one version (its manifest already holds id, name, version and counts)."""
        rows = manifest["rows"]
        values = {
            "id": manifest["id"], "tenant_id": self.tenant_id, "name": manifest["name"],
            "version": manifest["version"],
            "created_at": datetime.fromisoformat(manifest["created_at"]),
            "parent_id": (manifest.get("parent") or {}).get("id"),
            "content_hash": manifest["content_hash"], "config_hash": manifest["config_hash"],
            "path": manifest["path"], "rows_in": rows["in"], "rows_out": rows["out"],
            "rows_quarantined": rows["quarantined"],
            "duplicates_removed": rows["duplicates_removed"],
            "manifest": orjson.dumps(manifest).decode(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(datasets).values(**values))
        except IntegrityError:
            raise ShipyardError(f"Dataset '{manifest['name']}' version {manifest['version']} was "
                           "registered by another run at the same time; run the pipeline "
                           "again.") from None
        return values

    def list(self, name: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        query = select(datasets).where(datasets.c.tenant_id == self.tenant_id)
        if name:
            query = query.where(datasets.c.name == name)
        query = query.order_by(datasets.c.name, datasets.c.version.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def get(self, ref: str) -> dict[str, Any]:
        """The version `ref` names; NotFound says how to list what exists."""
        match = _REF.match(ref)
        where = [datasets.c.tenant_id == self.tenant_id]
        with self.engine.connect() as conn:
            if match:
                query = select(datasets).where(*where, datasets.c.name == match["name"])
                if match["version"]:
                    query = query.where(datasets.c.version == int(match["version"]))
                row = conn.execute(query.order_by(datasets.c.version.desc()).limit(1)).first()
                if row is not None:
                    return _row(row)
            rows = conn.execute(select(datasets).where(
                *where, datasets.c.id.startswith(ref, autoescape=True)).limit(2)).all()
        if len(rows) == 1:
            return _row(rows[0])
        raise NotFound(f"No dataset version matches '{ref}'; use name, name@VERSION or an id "
                       "from 'shipyard data list'.")
