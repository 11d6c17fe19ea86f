"""Shipyard: take AI prototypes to production.

>>> import shipyard
>>> app = shipyard.create_app(shipyard.load_config("shipyard.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

from shipyard._version import __version__
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
