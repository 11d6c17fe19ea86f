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

from sqlalchemy import Engine

from shipyard.config.schema import Config
from shipyard.config.targets import ModelConfig, ProviderConfig
from shipyard.lifecycle import registry

__all__ = ["alias_config", "alias_target", "register_aliases"]

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
    settings = model.model_dump(mode="json", exclude={"provider", "model", "deployments"})
    return {"alias": alias, "type": model.type, "deployments": deployments,
            "settings": _redact(settings)}


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
