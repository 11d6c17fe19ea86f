"""The registry: immutable versions of each target, aliases pointing at them, rollouts, the
history of what happened and why, and stored eval results.

Versions are numbered per target from 1 (like MLflow's model registry). Registering the same
code reference or the same artifact bytes again returns the existing version: a version is
what it serves, not when it was added. Aliases are the deploy and the rollback primitive:
`stable` is what answers, `canary` the candidate of a running rollout, and any other name is
a bookmark. Every change is recorded twice: as a lifecycle event (the target's history, shown
on the dashboard) and in the tamper-evident audit log.

>>> v = register_version(engine, "cancer", model=Path("v2.joblib"),  # doctest: +SKIP
...                      artifact_dir=Path(".shipyard/artifacts"), actor="cli:ana")
>>> start_rollout(engine, "cancer", v.number, mode="canary", share=5.0, actor="cli:ana")
... # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from shipyard.config.base import FUNCTION_PATTERN
from shipyard.errors import ConfigError, Conflict, InvalidRequest, NotFound
from shipyard.lifecycle.artifacts import ModelCaller, StoredArtifact, load_model, store_artifact
from shipyard.providers.loading import import_object
from shipyard.security.audit import AuditLog
from shipyard.security.roles import PLATFORM_TENANT
from shipyard.store.tables import (
    eval_runs,
    lifecycle_events,
    rollouts,
    target_aliases,
    target_versions,
)

__all__ = [
    "ALIAS_PREFIX",
    "Rollout",
    "Routing",
    "Version",
    "aliases_of",
    "finish_rollout",
    "get_version",
    "latest_eval",
    "list_evals",
    "list_events",
    "list_versions",
    "promote",
    "record_event",
    "register_config",
    "register_version",
    "rollback",
    "rollouts_of",
    "routing",
    "running_rollouts",
    "save_eval",
    "set_alias",
    "shadow_to_canary",
    "start_rollout",
    "update_rollout",
]


ALIAS_PREFIX = "model/"  # the registry's name of a model alias: `model/ALIAS`


@dataclass(frozen=True)
class Version:
    """One immutable version of a target."""

    target: str
    number: int
    kind: str  # function | model | config (a model alias's configuration)
    function: str | None
    artifact: StoredArtifact | None
    call: str | None
    spec_hash: str
    config: dict[str, Any]
    meta: dict[str, Any]
    created_at: datetime
    created_by: str

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "version": self.number, "kind": self.kind,
                "function": self.function,
                "artifact": None if self.artifact is None else {
                    "path": str(self.artifact.path), "sha256": self.artifact.sha256,
                    "format": self.artifact.format},
                "call": self.call, "spec_hash": self.spec_hash, "config": self.config,
                "meta": self.meta,
                "created_at": self.created_at.isoformat(), "created_by": self.created_by}


@dataclass(frozen=True)
class Rollout:
    """A candidate taking over from stable, step by step (or in the shadow)."""

    id: str
    target: str
    candidate: int
    stable: int
    mode: str
    state: str
    step: int
    share: float
    started_at: datetime
    step_started_at: datetime
    updated_at: datetime
    reason: str | None
    last_check: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "target": self.target, "candidate": self.candidate,
                "stable": self.stable, "mode": self.mode, "state": self.state,
                "step": self.step, "share": self.share,
                "started_at": self.started_at.isoformat(),
                "step_started_at": self.step_started_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), "reason": self.reason,
                "last_check": self.last_check}


@dataclass(frozen=True)
class Routing:
    """What one target serves now: its stable version and, during a rollout, the candidate."""

    stable: int
    candidate: int | None = None
    mode: str = "canary"
    share: float = 0.0
    rollout_id: str | None = None
    aliases: dict[str, int] = field(default_factory=dict)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _json(value: Any) -> str | None:
    return orjson.dumps(value).decode() if value else None


def _load(value: str | None) -> Any:
    return orjson.loads(value) if value else None


def _version(row: Any) -> Version:
    artifact = None
    if row.artifact_sha256:
        artifact = StoredArtifact(Path(row.artifact_path), row.artifact_sha256,
                                  row.artifact_format)
    return Version(row.target, row.number, row.kind, row.function, artifact, row.call,
                   row.spec_hash, _load(row.config) or {}, _load(row.meta) or {},
                   _utc(row.created_at), row.created_by)


def _rollout(row: Any) -> Rollout:
    return Rollout(row.id, row.target, row.candidate, row.stable, row.mode, row.state,
                   row.step, row.share, _utc(row.started_at), _utc(row.step_started_at),
                   _utc(row.updated_at), row.reason, _load(row.last_check))


def _audit(engine: Engine, actor: str, action: str, target: str,
           details: dict[str, Any]) -> None:
    AuditLog(engine).append(tenant_id=PLATFORM_TENANT, actor=actor[:128], action=action,
                            target=target, details=details)


def record_event(connection: Connection, target: str, event: str, *, version: int | None,
                 actor: str, details: dict[str, Any] | None = None,
                 at: datetime | None = None) -> None:
    connection.execute(insert(lifecycle_events).values(
        target=target, at=at or datetime.now(UTC), event=event, version=version,
        actor=actor[:128], details=_json(details)))


# -- versions ----------------------------------------------------------------------------------

def _spec_hash(kind: str, function: str | None, sha256: str | None, call: str | None,
               config: dict[str, Any]) -> str:
    text = orjson.dumps({"kind": kind, "function": function, "sha256": sha256, "call": call,
                         "config": config}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()


def register_version(engine: Engine, target: str, *, function: str | None = None,
                     model: Path | None = None, call: str | None = None,
                     artifact_dir: Path | None = None, config: dict[str, Any] | None = None,
                     meta: dict[str, Any] | None = None, actor: str,
                     audit: bool = True) -> tuple[Version, bool]:
    """Register a version (a code reference, or a model file copied into the artifact
    store); returns it and whether it is new (the same spec registered before is returned
    as it was)."""
    if (function is None) == (model is None):
        raise Conflict("A version is either a function (package.module:function) or a model "
                       "file; give exactly one.")
    artifact = None
    try:  # a version that cannot load is never registered
        if model is not None:
            if artifact_dir is None:
                raise Conflict("Registering a model file needs the artifact store "
                               "(lifecycle.artifact_dir).")
            artifact = store_artifact(model, artifact_dir)
            ModelCaller(load_model(artifact), call or "predict_proba", name=target)
        elif function is not None:
            if not FUNCTION_PATTERN.match(function):
                raise InvalidRequest(f"The function '{function}' is not a reference; write "
                                     "it as package.module:function.", param="function")
            if not callable(import_object(function, key="function")):
                raise InvalidRequest(f"The function '{function}' is not callable.",
                                     param="function")
    except ConfigError as exc:
        raise InvalidRequest(f"The version cannot be registered: {exc.message}",
                             param="model" if model is not None else "function") from None
    kind = "model" if artifact is not None else "function"
    config = dict(config or {})
    spec = _spec_hash(kind, function, artifact.sha256 if artifact else None,
                      call if artifact else None, config)
    return _store(engine, target, kind, spec, function=function, artifact=artifact,
                  call=call if artifact else None, config=config, meta=meta, actor=actor,
                  audit=audit)


def register_config(engine: Engine, target: str, config: dict[str, Any], *,
                    meta: dict[str, Any] | None = None, actor: str,
                    audit: bool = True, deploy: bool = True) -> tuple[Version, bool]:
    """Register a model alias's configuration as a version of kind `config` (`target` is
    `model/ALIAS`, see `shipyard.lifecycle.aliases`): named by the SHA-256 of its canonical
    JSON, so the same configuration registered again returns the existing version. The
    `config` alias notes the version the config file names; when that changes (a new
    configuration, or the config went back to an earlier one), it deploys: `stable` moves
    to it (ending a running rollout). Unchanged, the registry's `stable` wins, so a version
    promoted by a rollout (or a rollback) stays pinned across restarts and reloads.
    `deploy=False` only registers (a candidate to roll out, from another config file)."""
    config = orjson.loads(orjson.dumps(config))  # canonical JSON types (tuples → lists)
    spec = _spec_hash("config", None, None, None, config)
    version, new = _store(engine, target, "config", spec, function=None, artifact=None,
                          call=None, config=config, meta=meta, actor=actor, audit=audit)
    if not deploy:
        return version, new
    names = aliases_of(engine, target).get(target, {})
    stable, named = names.get("stable"), names.get("config")
    if named != version.number:
        try:
            with engine.begin() as connection:
                _put_alias(connection, target, "config", version.number, actor,
                           datetime.now(UTC))
        except IntegrityError:  # another process (a worker starting too) wrote it first
            pass
    if stable is None or (named != version.number and stable != version.number):
        _promote(engine, target, version.number, actor=actor,
                 reason="first version" if stable is None else "the config names it")
    return version, new


def _store(engine: Engine, target: str, kind: str, spec: str, *, function: str | None,
           artifact: StoredArtifact | None, call: str | None, config: dict[str, Any],
           meta: dict[str, Any] | None, actor: str, audit: bool) -> tuple[Version, bool]:
    """Insert a version with the next number, unless one with `spec` exists."""
    for _ in range(5):  # two registrations racing for the next number: the loser retries
        with engine.begin() as connection:
            found = connection.execute(select(target_versions).where(
                target_versions.c.target == target,
                target_versions.c.spec_hash == spec)).first()
            if found is not None:
                return _version(found), False
            number = (connection.execute(select(func.max(target_versions.c.number)).where(
                target_versions.c.target == target)).scalar() or 0) + 1
            now = datetime.now(UTC)
            values = {"id": os.urandom(16).hex(), "target": target, "number": number,
                      "kind": kind, "function": function,
                      "artifact_sha256": artifact.sha256 if artifact else None,
                      "artifact_path": str(artifact.path) if artifact else None,
                      "artifact_format": artifact.format if artifact else None,
                      "call": call, "spec_hash": spec,
                      "config": _json(config), "meta": _json(meta), "created_at": now,
                      "created_by": actor[:128]}
            try:
                connection.execute(insert(target_versions).values(**values))
            except IntegrityError:
                continue
            record_event(connection, target, "registered", version=number, actor=actor,
                         details={"kind": kind, "function": function,
                                  "sha256": artifact.sha256 if artifact else None,
                                  **(meta or {})}, at=now)
        if audit:
            _audit(engine, actor, "version.register", f"{target}@{number}",
                   {"kind": kind, "sha256": artifact.sha256 if artifact else None,
                    "function": function})
        version = get_version(engine, target, number)
        return version, True
    raise Conflict(f"Registering a version of '{target}' kept colliding with others; retry.")


def list_versions(engine: Engine, target: str | None = None) -> list[Version]:
    query = select(target_versions).order_by(target_versions.c.target,
                                             target_versions.c.number)
    if target is not None:
        query = query.where(target_versions.c.target == target)
    with engine.connect() as connection:
        return [_version(r) for r in connection.execute(query)]


def get_version(engine: Engine, target: str, number: int) -> Version:
    with engine.connect() as connection:
        row = connection.execute(select(target_versions).where(
            target_versions.c.target == target, target_versions.c.number == number)).first()
    if row is None:
        known = [v.number for v in list_versions(engine, target)]
        raise NotFound(f"'{target}' has no version {number} (registered: "
                       f"{', '.join(map(str, known)) or 'none'}); see "
                       f"'shipyard versions list {target}'.", param="version")
    return _version(row)


# -- aliases -----------------------------------------------------------------------------------

def aliases_of(engine: Engine, target: str | None = None) -> dict[str, dict[str, int]]:
    """Target → alias → version number."""
    query = select(target_aliases)
    if target is not None:
        query = query.where(target_aliases.c.target == target)
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as connection:
        for row in connection.execute(query):
            out.setdefault(row.target, {})[row.alias] = row.version
    return out


def _put_alias(connection: Connection, target: str, alias: str, number: int,
               actor: str, now: datetime) -> None:
    done = connection.execute(update(target_aliases).where(
        target_aliases.c.target == target, target_aliases.c.alias == alias).values(
        version=number, updated_at=now, updated_by=actor[:128])).rowcount
    if not done:
        connection.execute(insert(target_aliases).values(
            target=target, alias=alias, version=number, updated_at=now,
            updated_by=actor[:128]))


def _drop_alias(connection: Connection, target: str, alias: str) -> None:
    connection.execute(delete(target_aliases).where(target_aliases.c.target == target,
                                                    target_aliases.c.alias == alias))


def set_alias(engine: Engine, target: str, alias: str, number: int, *, actor: str,
              reason: str | None = None) -> None:
    """Point `alias` at version `number` (which must exist)."""
    get_version(engine, target, number)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        before = connection.execute(select(target_aliases.c.version).where(
            target_aliases.c.target == target, target_aliases.c.alias == alias)).scalar()
        _put_alias(connection, target, alias, number, actor, now)
        record_event(connection, target, "alias", version=number, actor=actor,
                     details={"alias": alias, "from": before, "reason": reason}, at=now)
    _audit(engine, actor, "version.alias", f"{target}@{number}",
           {"alias": alias, "from": before, "reason": reason})


def promote(engine: Engine, target: str, number: int, *, actor: str,
            reason: str | None = None) -> int | None:
    """Make version `number` stable (ending a running rollout of it as promoted, and any
    other as stopped); returns the version that was stable before."""
    get_version(engine, target, number)
    return _promote(engine, target, number, actor=actor, reason=reason)


def _promote(engine: Engine, target: str, number: int, *, actor: str,
             reason: str | None) -> int | None:
    now = datetime.now(UTC)
    with engine.begin() as connection:
        before = connection.execute(select(target_aliases.c.version).where(
            target_aliases.c.target == target, target_aliases.c.alias == "stable")).scalar()
        _put_alias(connection, target, "stable", number, actor, now)
        for row in connection.execute(select(rollouts).where(
                rollouts.c.target == target, rollouts.c.state == "running")).all():
            state = "promoted" if row.candidate == number else "stopped"
            connection.execute(update(rollouts).where(rollouts.c.id == row.id).values(
                state=state, updated_at=now, reason=reason or f"version {number} promoted"))
        _drop_alias(connection, target, "canary")
        record_event(connection, target, "promoted", version=number, actor=actor,
                     details={"from": before, "reason": reason}, at=now)
    _audit(engine, actor, "version.promote", f"{target}@{number}",
           {"from": before, "reason": reason})
    return int(before) if before is not None else None


def rollback(engine: Engine, target: str, *, actor: str, to: int | None = None,
             reason: str | None = None) -> tuple[str, int | None]:
    """Undo the last change: a running rollout is rolled back (stable keeps serving alone);
    otherwise stable moves back to the version it pointed at before (or to `to`).
    Returns what happened (`rollout` or `stable`) and the version stable serves now."""
    running = [r for r in running_rollouts(engine) if r.target == target]
    if running and to is None:
        finish_rollout(engine, running[0], "rolled_back", actor=actor,
                       reason=reason or "rolled back by hand")
        return "rollout", running[0].stable
    current = aliases_of(engine, target).get(target, {}).get("stable")
    if to is None:
        previous = None
        with engine.connect() as connection:
            for row in connection.execute(select(lifecycle_events).where(
                    lifecycle_events.c.target == target,
                    lifecycle_events.c.event.in_(("promoted", "rolled_back_stable"))).order_by(
                    lifecycle_events.c.seq.desc())):
                details = _load(row.details) or {}
                if row.version == current and details.get("from") is not None:
                    previous = int(details["from"])
                    break
        if previous is None:
            raise Conflict(f"'{target}' has no earlier stable version to roll back to; name "
                           "one with --to N (see 'shipyard versions list').")
        to = previous
    get_version(engine, target, to)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        _put_alias(connection, target, "stable", to, actor, now)
        for stopped in running:
            connection.execute(update(rollouts).where(rollouts.c.id == stopped.id).values(
                state="stopped", updated_at=now, reason=reason or "stable rolled back"))
        _drop_alias(connection, target, "canary")
        record_event(connection, target, "rolled_back_stable", version=to, actor=actor,
                     details={"from": current, "reason": reason}, at=now)
    _audit(engine, actor, "version.rollback", f"{target}@{to}",
           {"from": current, "reason": reason})
    return "stable", to


# -- rollouts ----------------------------------------------------------------------------------

def start_rollout(engine: Engine, target: str, candidate: int, *, mode: str, share: float,
                  actor: str) -> Rollout:
    """Start a canary or shadow rollout of `candidate` against the current stable version."""
    get_version(engine, target, candidate)
    stable = aliases_of(engine, target).get(target, {}).get("stable")
    if stable is None:
        raise Conflict(f"'{target}' has no stable version yet; promote one first "
                       f"('shipyard versions promote {target} N').")
    if stable == candidate:
        raise Conflict(f"Version {candidate} of '{target}' is already stable; register a new "
                       "version to roll out.")
    if any(r.target == target for r in running_rollouts(engine)):
        raise Conflict(f"'{target}' already has a rollout running; roll it back or promote "
                       "it first.")
    now = datetime.now(UTC)
    rollout_id = os.urandom(16).hex()
    with engine.begin() as connection:
        connection.execute(insert(rollouts).values(
            id=rollout_id, target=target, candidate=candidate, stable=stable, mode=mode,
            state="running", step=0, share=share if mode == "canary" else 0.0,
            started_at=now, step_started_at=now, updated_at=now))
        _put_alias(connection, target, "canary", candidate, actor, now)
        record_event(connection, target, f"{mode}_started", version=candidate, actor=actor,
                     details={"stable": stable, "share": share if mode == "canary" else None},
                     at=now)
    _audit(engine, actor, "rollout.start", f"{target}@{candidate}",
           {"mode": mode, "stable": stable, "share": share})
    return next(r for r in rollouts_of(engine, target) if r.id == rollout_id)


def running_rollouts(engine: Engine) -> list[Rollout]:
    with engine.connect() as connection:
        return [_rollout(r) for r in connection.execute(
            select(rollouts).where(rollouts.c.state == "running"))]


def rollouts_of(engine: Engine, target: str, *, limit: int = 50) -> list[Rollout]:
    query = (select(rollouts).where(rollouts.c.target == target)
             .order_by(rollouts.c.started_at.desc()).limit(limit))
    with engine.connect() as connection:
        return [_rollout(r) for r in connection.execute(query)]


def update_rollout(engine: Engine, rollout: Rollout, *, step: int | None = None,
                   share: float | None = None, last_check: dict[str, Any] | None = None,
                   actor: str = "shipyard:rollouts") -> bool:
    """Advance a running rollout's step, or keep its newest gate check; False when it is
    no longer running (someone else finished it)."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"updated_at": now}
    if last_check is not None:
        values["last_check"] = _json(last_check)
    if step is not None and share is not None:
        values.update(step=step, share=share, step_started_at=now)
    with engine.begin() as connection:
        done = connection.execute(update(rollouts).where(
            rollouts.c.id == rollout.id, rollouts.c.state == "running").values(
            **values)).rowcount
        if done and step is not None:
            record_event(connection, rollout.target, "step", version=rollout.candidate,
                         actor=actor, details={"share": share, "step": step,
                                               "check": last_check}, at=now)
    if done and step is not None:
        _audit(engine, actor, "rollout.step", f"{rollout.target}@{rollout.candidate}",
               {"share": share})
    return bool(done)


def finish_rollout(engine: Engine, rollout: Rollout, state: str, *, actor: str,
                   reason: str, check: dict[str, Any] | None = None) -> bool:
    """End a running rollout: `promoted` (stable → candidate) or `rolled_back` (the
    candidate stops serving). Only one caller wins; False when it had already ended."""
    now = datetime.now(UTC)
    with engine.begin() as connection:
        done = connection.execute(update(rollouts).where(
            rollouts.c.id == rollout.id, rollouts.c.state == "running").values(
            state=state, updated_at=now, reason=reason,
            last_check=_json(check) if check else rollouts.c.last_check)).rowcount
        if not done:
            return False
        if state == "promoted":
            _put_alias(connection, rollout.target, "stable", rollout.candidate, actor, now)
        _drop_alias(connection, rollout.target, "canary")
        event = "promoted" if state == "promoted" else "rolled_back"
        record_event(connection, rollout.target, event, version=rollout.candidate,
                     actor=actor, details={"from": rollout.stable, "reason": reason,
                                           "mode": rollout.mode, "check": check}, at=now)
    action = "version.promote" if state == "promoted" else "rollout.rollback"
    _audit(engine, actor, action, f"{rollout.target}@{rollout.candidate}",
           {"stable_before": rollout.stable, "reason": reason})
    return True


def shadow_to_canary(engine: Engine, rollout: Rollout, share: float, *, actor: str,
                     check: dict[str, Any] | None = None) -> bool:
    """A shadow rollout that passed its gates becomes a canary at `share` percent."""
    now = datetime.now(UTC)
    with engine.begin() as connection:
        done = connection.execute(update(rollouts).where(
            rollouts.c.id == rollout.id, rollouts.c.state == "running").values(
            mode="canary", step=0, share=share, step_started_at=now, updated_at=now,
            last_check=None)).rowcount
        if done:
            record_event(connection, rollout.target, "shadow_passed",
                         version=rollout.candidate, actor=actor,
                         details={"share": share, "check": check}, at=now)
    if done:
        _audit(engine, actor, "rollout.step", f"{rollout.target}@{rollout.candidate}",
               {"share": share, "from": "shadow"})
    return bool(done)


def routing(engine: Engine) -> dict[str, Routing]:
    """What every target with a stable alias serves now (one read of two small tables)."""
    aliases = aliases_of(engine)
    running = {r.target: r for r in running_rollouts(engine)}
    out = {}
    for target, names in aliases.items():
        if "stable" not in names:
            continue
        rollout = running.get(target)
        if rollout is None:
            out[target] = Routing(names["stable"], aliases=names)
        else:
            out[target] = Routing(names["stable"], rollout.candidate, rollout.mode,
                                  rollout.share, rollout.id, aliases=names)
    return out


# -- history and evals -------------------------------------------------------------------------

def list_events(engine: Engine, target: str, *, limit: int = 100) -> list[dict[str, Any]]:
    query = (select(lifecycle_events).where(lifecycle_events.c.target == target)
             .order_by(lifecycle_events.c.seq.desc()).limit(limit))
    with engine.connect() as connection:
        return [{"seq": r.seq, "at": _utc(r.at), "event": r.event, "version": r.version,
                 "actor": r.actor, "details": _load(r.details) or {}}
                for r in connection.execute(query)]


def save_eval(engine: Engine, target: str, *, version: int | None, baseline: int | None,
              dataset: str, rows: int, metrics: dict[str, Any],
              baseline_metrics: dict[str, Any] | None, passed: bool | None,
              actor: str) -> str:
    run_id = os.urandom(16).hex()
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(insert(eval_runs).values(
            id=run_id, target=target, version=version, baseline=baseline, dataset=dataset,
            rows=rows, metrics=orjson.dumps(metrics).decode(),
            baseline_metrics=_json(baseline_metrics), passed=passed, created_at=now))
        record_event(connection, target, "eval", version=version, actor=actor,
                     details={"run": run_id, "baseline": baseline, "dataset": dataset,
                              "rows": rows, "passed": passed,
                              "metrics": {k: v for k, v in metrics.items()
                                          if isinstance(v, int | float)}}, at=now)
    return run_id


def list_evals(engine: Engine, target: str, *, limit: int = 50) -> list[dict[str, Any]]:
    query = (select(eval_runs).where(eval_runs.c.target == target)
             .order_by(eval_runs.c.created_at.desc()).limit(limit))
    with engine.connect() as connection:
        return [{"id": r.id, "version": r.version, "baseline": r.baseline,
                 "dataset": r.dataset, "rows": r.rows, "metrics": _load(r.metrics) or {},
                 "baseline_metrics": _load(r.baseline_metrics), "passed": r.passed,
                 "created_at": _utc(r.created_at)} for r in connection.execute(query)]


def latest_eval(engine: Engine, target: str, version: int) -> dict[str, Any] | None:
    query = (select(eval_runs).where(and_(eval_runs.c.target == target,
                                          eval_runs.c.version == version))
             .order_by(eval_runs.c.created_at.desc()).limit(1))
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else {"metrics": _load(row.metrics) or {},
                                     "passed": row.passed, "rows": row.rows}
