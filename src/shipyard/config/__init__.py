"""Configuration: the settings table, the `shipyard.yaml` loader and the starter file.

The public names load on first use (PEP 562), so `from shipyard.config import env` — what the
CLI needs to start — does not import pydantic and the whole settings schema.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shipyard.config.loader import load_config, parse_config
    from shipyard.config.schema import Config, iter_settings

__all__ = ["Config", "iter_settings", "load_config", "parse_config"]

# Where each public name lives.
_HOMES = {"Config": "shipyard.config.schema", "iter_settings": "shipyard.config.schema",
          "load_config": "shipyard.config.loader", "parse_config": "shipyard.config.loader"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shipyard.config' has no attribute '{name}'")
    value = getattr(import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
