"""The one module that reads the process environment.

Everything else receives values from here: `SHIPYARD_*` overrides of scalar settings, the
config path, and `$env` secret references.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["PREFIX", "config_path_from_env", "export", "get", "overrides", "snapshot"]

PREFIX = "SHIPYARD_"
# Names under SHIPYARD_ that are not setting overrides.
_RESERVED = {"SHIPYARD_CONFIG", "SHIPYARD_API_KEY", "SHIPYARD_STRICT_SERVICES"}


def get(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Return one environment variable (used for `{$env: NAME}` references)."""
    return (os.environ if environ is None else environ).get(name)


def config_path_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """`SHIPYARD_CONFIG`: where `shipyard.yaml` lives when `--config` is not given."""
    return get("SHIPYARD_CONFIG", environ)


def overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return `SHIPYARD_SECTION_KEY=value` variables as `{"section_key": value}` (lowercase)."""
    env = os.environ if environ is None else environ
    return {
        name[len(PREFIX) :].lower(): value
        for name, value in env.items()
        if name.startswith(PREFIX) and name not in _RESERVED
    }


def snapshot() -> dict[str, str]:
    """A copy of the environment, for code that passes it on (`load_config(environ=...)`)."""
    return dict(os.environ)


def export(name: str, value: str) -> None:
    """Set a variable for child processes (worker processes read SHIPYARD_CONFIG)."""
    os.environ[name] = value
