"""Configuration: the settings table, the `shipyard.yaml` loader and the starter file."""

from __future__ import annotations

from shipyard.config.loader import load_config, parse_config
from shipyard.config.schema import Config, iter_settings

__all__ = ["Config", "iter_settings", "load_config", "parse_config"]
