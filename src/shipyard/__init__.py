"""Shipyard: take AI prototypes to production.

>>> import shipyard
>>> app = shipyard.create_app(shipyard.load_config("shipyard.yaml"))  # doctest: +SKIP

The public names load on first use (PEP 562), so `import shipyard` — and every `shipyard`
command — pays only for what it touches: the CLI's `version` and `--help` never import the
gateway.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from shipyard._version import __version__

if TYPE_CHECKING:
    from shipyard.config import Config, load_config, parse_config
    from shipyard.errors import ShipyardError
    from shipyard.gateway import create_app
    from shipyard.pipeline import Call, Handler, Reply, Stage
    from shipyard.providers import Provider
    from shipyard.sdk import Result, async_client, client

__all__ = [
    "Call",
    "Config",
    "Handler",
    "Provider",
    "Reply",
    "Result",
    "ShipyardError",
    "Stage",
    "__version__",
    "async_client",
    "client",
    "create_app",
    "load_config",
    "parse_config",
]

# Where each public name lives.
_HOMES = {
    "Call": "shipyard.pipeline", "Handler": "shipyard.pipeline", "Reply": "shipyard.pipeline",
    "Stage": "shipyard.pipeline", "Config": "shipyard.config",
    "load_config": "shipyard.config", "parse_config": "shipyard.config",
    "Provider": "shipyard.providers", "Result": "shipyard.sdk",
    "async_client": "shipyard.sdk", "client": "shipyard.sdk",
    "ShipyardError": "shipyard.errors", "create_app": "shipyard.gateway",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shipyard' has no attribute '{name}'")
    value = getattr(import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
