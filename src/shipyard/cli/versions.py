"""`shipyard versions`: the registry of a service's versions, its aliases and rollouts.

Commands act on the store the config names; a running gateway serves the change within one
controller tick (`lifecycle.tick_s`). Every change is in the audit log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console, fail, open_store, resolve_config
from shipyard.cli.keys import actor
from shipyard.errors import ShipyardError

__all__ = ["app"]

app = typer.Typer(help="Versions of services and model aliases (model/ALIAS): list, show, "
                  "register, promote, roll out, roll back.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c",
                      help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")]
Service = Annotated[str, typer.Argument(help="The service (a name under `services:`), or a "
                    "model alias as model/ALIAS (its configuration versions).")]


def _service(config: Path | None, name: str) -> Any:
    """The rollout policy of the service or model alias (model/ALIAS) `name`."""
    _, cfg = resolve_config(config, secrets=False)
    if name.startswith("model/"):
        if name[6:] not in cfg.models:
            raise fail(f"The config has no model alias '{name[6:]}' (it has "
                       f"{', '.join(sorted(cfg.models)) or 'none'}).")
        return cfg.models[name[6:]].rollout
    if name not in cfg.services:
        raise fail(f"The config has no service '{name}' (it has "
                   f"{', '.join(sorted(cfg.services)) or 'none'}).")
    return cfg.services[name].rollout


@app.command("list")
def list_versions(service: Service, config: ConfigOpt = None,
                  as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
                  ) -> None:
    """List a service's versions, which aliases point at them and the running rollout
    (model/ALIAS: a model alias's configuration versions).

    Example: shipyard versions list cancer
    """
    from shipyard.lifecycle import registry

    engine = open_store(config, None, migrate=True)
    try:
        versions = registry.list_versions(engine, service)
        aliases = registry.aliases_of(engine, service).get(service, {})
        rollouts = [r for r in registry.running_rollouts(engine) if r.target == service]
    finally:
        engine.dispose()
    if as_json:
        print(orjson.dumps({"aliases": aliases, "rollouts": [r.to_dict() for r in rollouts],
                            "versions": [v.to_dict() for v in versions]}).decode())
        return
    if not versions:
        console.print(f"'{escape(service)}' has no versions yet; they are registered when "
                      "'shipyard serve' starts, or with 'shipyard versions register'.")
        return
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    table = Table(show_edge=False)
    for column in ("version", "aliases", "kind", "artifact / function", "created", "by"):
        table.add_column(column)
    for v in versions:
        what = (f"{v.artifact.format} {v.artifact.sha256[:12]}" if v.artifact
                else f"config {v.spec_hash[:12]}" if v.kind == "config" else v.function or "")
        table.add_row(str(v.number), ", ".join(sorted(by_version.get(v.number, []))), v.kind,
                      escape(what), v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      escape(v.created_by))
    console.print(table)
    for r in rollouts:
        console.print(f"rollout: {r.mode} of v{r.candidate} against v{r.stable}"
                      + (f" at {r.share:g}%" if r.mode == "canary" else ""), highlight=False)


@app.command()
def show(service: Service, version: Annotated[int, typer.Argument(help="Version number.")],
         config: ConfigOpt = None) -> None:
    """Show one version (artifact, hash, config, metadata) and its history.

    Example: shipyard versions show cancer 2
    """
    from shipyard.lifecycle import registry

    engine = open_store(config, None, migrate=True)
    try:
        found = registry.get_version(engine, service, version)
        events = [e for e in registry.list_events(engine, service, limit=200)
                  if e["version"] == version]
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    data = found.to_dict()
    data["history"] = [{**e, "at": e["at"].isoformat()} for e in reversed(events)]
    console.print_json(orjson.dumps(data).decode())


@app.command()
def register(
    service: Service,
    model: Annotated[Path | None, typer.Option(
        help="A model file (.joblib, .pkl, .onnx) to copy into the artifact store. Pickles "
        "run code when loaded: register only files you trust.")] = None,
    function: Annotated[str | None, typer.Option(
        help="Or a function as package.module:function.")] = None,
    call: Annotated[str | None, typer.Option(
        help="predict or predict_proba (default: the service's `call`).")] = None,
    note: Annotated[str | None, typer.Option(help="A note kept with the version.")] = None,
    from_config: Annotated[Path | None, typer.Option(
        "--from-config", help="model/ALIAS: a shipyard.yaml whose models.ALIAS is the "
        "configuration to register (a candidate; providers by name, as in the config).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Register a new immutable version (it serves nothing until promoted or rolled out).

    Example: shipyard versions register cancer --model model-v2.joblib;
    shipyard versions register model/support --from-config candidate.yaml
    """
    from shipyard.lifecycle import registry
    from shipyard.lifecycle.artifacts import artifact_dir

    _, cfg = resolve_config(config, secrets=False)
    if service.startswith("model/"):
        _register_alias(service, cfg, from_config, note, config)
        return
    if service not in cfg.services:
        raise fail(f"The config has no service '{service}' (it has "
                   f"{', '.join(sorted(cfg.services)) or 'none'}).")
    if (model is None) == (function is None):
        raise fail("Give exactly one of --model FILE or --function package.module:function.")
    engine = open_store(config, None, migrate=True)
    try:
        version, new = registry.register_version(
            engine, service, model=model.resolve() if model else None, function=function,
            call=call or cfg.services[service].call, artifact_dir=artifact_dir(cfg),
            actor=actor(), meta={"source": "cli", **({"note": note} if note else {})})
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if new:
        console.print(f"Registered {escape(service)} version {version.number}.")
    else:
        console.print(f"{escape(service)} version {version.number} already holds this "
                      "artifact; nothing new was registered.")


def _register_alias(service: str, cfg: Any, source: Path | None, note: str | None,
                    config: Path | None) -> None:
    """Register models.ALIAS of another config file as a version of model/ALIAS."""
    from shipyard.lifecycle import registry
    from shipyard.lifecycle.aliases import alias_config

    alias = service[len("model/"):]
    if alias not in cfg.models:
        raise fail(f"The config has no model alias '{alias}' (it has "
                   f"{', '.join(sorted(cfg.models)) or 'none'}).")
    if source is None:
        raise fail(f"Give --from-config FILE: a shipyard.yaml whose models.{alias} is the "
                   "configuration to register (the running config's own configuration is "
                   "registered by the gateway when it starts or reloads).")
    _, other = resolve_config(source, secrets=False)
    if alias not in other.models:
        raise fail(f"{source} has no model alias '{alias}' under models.")
    missing = [d.provider for d in other.models[alias].targets(alias)
               if d.provider not in cfg.providers]
    if missing:
        raise fail(f"models.{alias} in {source} sends to provider(s) "
                   f"{', '.join(missing)}, which the config does not have; add them there.")
    engine = open_store(config, None, migrate=True)
    try:
        version, new = registry.register_config(
            engine, service, alias_config(alias, other.models[alias], other),
            meta={"source": "cli", "file": str(source), **({"note": note} if note else {})},
            actor=actor(), deploy=False)
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if new:
        console.print(f"Registered {escape(service)} version {version.number}.")
    else:
        console.print(f"{escape(service)} version {version.number} already is this "
                      "configuration; nothing new was registered.")


@app.command()
def promote(service: Service,
            version: Annotated[int, typer.Argument(help="The version to make stable.")],
            reason: Annotated[str | None, typer.Option(help="Why (audit log).")] = None,
            config: ConfigOpt = None) -> None:
    """Make a version stable now (ends a running rollout). A model alias's promoted
    version stays stable until the config file names another configuration.

    Example: shipyard versions promote cancer 2
    """
    from shipyard.lifecycle import registry

    _service(config, service)
    engine = open_store(config, None, migrate=True)
    try:
        before = registry.promote(engine, service, version, actor=actor(), reason=reason)
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    console.print(f"{escape(service)}: stable is now version {version} (was {before}).")


@app.command()
def rollout(
    service: Service,
    version: Annotated[int, typer.Argument(help="The candidate version.")],
    mode: Annotated[str | None, typer.Option(
        help="canary or shadow (default: the service's or alias's rollout.mode).")] = None,
    share: Annotated[float | None, typer.Option(
        help="Starting canary share in percent (default: the first of rollout.steps).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Start a canary (or shadow) rollout of a version; the gates decide the rest.

    Example: shipyard versions rollout cancer 2; shipyard versions rollout model/support 1
    --mode shadow
    """
    from shipyard.lifecycle import registry

    policy = _service(config, service)
    mode = mode or policy.mode
    if mode not in ("canary", "shadow"):
        raise fail(f"--mode is '{mode}'; use canary or shadow.")
    engine = open_store(config, None, migrate=True)
    try:
        started = registry.start_rollout(engine, service, version, mode=mode,
                                         share=share or policy.steps[0], actor=actor())
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    what = (f"canary at {started.share:g}%" if started.mode == "canary" else "shadow")
    console.print(f"{escape(service)}: version {version} started as {what} against stable "
                  f"version {started.stable}.", highlight=False)


@app.command()
def rollback(service: Service,
             to: Annotated[int | None, typer.Option(
                 help="Make this version stable instead of the previous one.")] = None,
             reason: Annotated[str | None, typer.Option(help="Why (audit log).")] = None,
             config: ConfigOpt = None) -> None:
    """Roll back: end a running rollout, or move stable back to the version before.

    Example: shipyard versions rollback cancer
    """
    from shipyard.lifecycle import registry

    _service(config, service)
    engine = open_store(config, None, migrate=True)
    try:
        what, stable = registry.rollback(engine, service, actor=actor(), to=to, reason=reason)
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    if what == "rollout":
        console.print(f"{escape(service)}: the rollout was rolled back; stable version "
                      f"{stable} serves alone.")
    else:
        console.print(f"{escape(service)}: stable is now version {stable}.")


@app.command()
def history(service: Service, limit: Annotated[int, typer.Option(help="Most events.")] = 30,
            config: ConfigOpt = None) -> None:
    """What happened to a service's versions, newest first, with the reasons.

    Example: shipyard versions history cancer
    """
    from shipyard.lifecycle import registry

    engine = open_store(config, None, migrate=True)
    try:
        events = registry.list_events(engine, service, limit=limit)
    finally:
        engine.dispose()
    for e in events:
        details = e["details"]
        why = details.get("reason") or ""
        console.print(f"{e['at']:%Y-%m-%d %H:%M:%S}  {e['event']:<18} "
                      f"v{e['version'] if e['version'] is not None else '-'}  "
                      f"{escape(e['actor'])}  {escape(str(why))}", highlight=False)
