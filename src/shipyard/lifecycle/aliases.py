"""Versions of model aliases: each alias's configuration is an immutable version too.

A model alias has no code or artifact of its own: what it serves is its configuration —
the provider(s) and upstream model name(s), the provider settings that change answers
(kind, endpoint, API version, region, default `max_tokens`, local model file and chat
template), and the alias's own settings (guards, PII rules, limits, retries, fallbacks,
cache, stages, ...). When the gateway starts or reloads, that configuration is registered
in the registry as a version of kind `config` under the name `model/ALIAS`, keyed by the
SHA-256 of its canonical JSON: an unchanged configuration keeps its version, a changed one
gets the next number, and `stable` follows the config file.

Secrets never enter a version: provider keys and tokens are left out, and any setting whose
name says it holds one (`key`, `secret`, `token`, `password`, `authorization`) is replaced
by `<redacted>` — rotating a key is not a new version.

>>> numbers = register_aliases(engine, config)  # doctest: +SKIP
>>> numbers["chat"]  # doctest: +SKIP
1
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pydantic
from sqlalchemy import Engine

from shipyard.config.schema import Config
from shipyard.config.targets import ModelConfig, ProviderConfig
from shipyard.errors import ConfigError
from shipyard.lifecycle import registry

__all__ = ["alias_config", "alias_target", "model_config_of", "register_aliases"]

# Provider settings that change what a model answers (the rest are transport and secrets).
_PROVIDER_FIELDS = ("kind", "base_url", "api_version", "region", "function", "model_path",
                    "default_max_tokens", "chat_template")
_SECRET = re.compile(r"key|secret|token|password|passwd|authorization|credential", re.I)


def alias_target(alias: str) -> str:
    """The registry's name of a model alias."""
    return registry.ALIAS_PREFIX + alias


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<redacted>" if isinstance(k, str) and _SECRET.search(k) and
                isinstance(v, str) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _endpoint(url: str | None) -> str | None:
    """A base URL without user info or query (either may carry a credential)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _provider(config: ProviderConfig | None) -> dict[str, Any] | None:
    if config is None:
        return None
    out = {name: getattr(config, name) for name in _PROVIDER_FIELDS}
    out["base_url"] = _endpoint(out["base_url"])
    return {k: v for k, v in out.items() if v is not None}


def alias_config(alias: str, model: ModelConfig, config: Config) -> dict[str, Any]:
    """What one alias serves, as canonical JSON-ready data (see the module docstring)."""
    deployments = [{"provider": d.provider, "model": d.model or alias, "weight": d.weight,
                    "provider_config": _provider(config.providers.get(d.provider))}
                   for d in model.targets(alias)]
    settings = model.model_dump(mode="json", exclude={"provider", "model", "deployments",
                                                    "rollout"})
    return {"alias": alias, "type": model.type, "deployments": deployments,
            "settings": _redact(settings)}


def _restore(stored: Any, current: Any, where: str) -> Any:
    """A stored setting with its redacted secrets taken from the running config (the
    same setting at the same place), so a version never needs its secret stored."""
    if stored == "<redacted>":
        if isinstance(current, str):
            return current
        raise ConfigError(f"The setting '{where}' of this version holds a secret, which "
                          "versions never store, and the config has no value there to use.")
    if isinstance(stored, dict):
        here = current if isinstance(current, dict) else {}
        return {k: _restore(v, here.get(k), f"{where}.{k}") for k, v in stored.items()}
    if isinstance(stored, list):
        there = current if isinstance(current, list) else []
        return [_restore(v, there[i] if i < len(there) else None, f"{where}[{i}]")
                for i, v in enumerate(stored)]
    return stored


def model_config_of(alias: str, stored: dict[str, Any], config: Config) -> ModelConfig:
    """The `ModelConfig` a registered configuration version of `alias` serves, against
    the running `config`: its deployments must name providers that exist and send as the
    version recorded (kind, endpoint, API version, ...; keys come from the config), its
    secrets are the config's, and its rollout policy is the config's. Raises `ConfigError`
    saying what does not fit."""
    current = config.models.get(alias)
    if current is None:
        raise ConfigError(f"The config has no model alias '{alias}' any more.")
    for deployment in stored.get("deployments", []):
        name = deployment.get("provider")
        provider = config.providers.get(name)
        if provider is None:
            raise ConfigError(f"It sends to provider '{name}', which the config no longer "
                              "has; add it back under providers to serve this version.")
        recorded = deployment.get("provider_config")
        now = orjson.loads(orjson.dumps(_provider(provider)))
        if recorded != now:
            raise ConfigError(f"It sends to provider '{name}' as {recorded}, but the "
                              f"config's provider '{name}' is now {now}; a version is "
                              "served only as it was registered.")
    dumped = current.model_dump(mode="json", exclude={"provider", "model", "deployments",
                                                       "rollout"})
    settings = _restore(stored.get("settings", {}), dumped, f"models.{alias}")
    try:
        return ModelConfig.model_validate({
            **settings, "rollout": current.rollout.model_dump(),
            "deployments": [{"provider": d["provider"], "model": d["model"],
                             "weight": d["weight"]} for d in stored.get("deployments", [])]})
    except pydantic.ValidationError as exc:
        raise ConfigError(f"Its settings no longer validate ({exc.errors()[0]['msg']}).") \
            from None


def register_aliases(engine: Engine, config: Config, *, actor: str = "config"
                     ) -> dict[str, int]:
    """Register every model alias's configuration (blocking); alias → its version number."""
    out = {}
    for alias, model in config.models.items():
        version, _ = registry.register_config(
            engine, alias_target(alias), alias_config(alias, model, config),
            meta={"source": "config", "alias": alias}, actor=actor)
        out[alias] = version.number
    return out
