"""The one module that reads the process environment.

Everything else receives values from here: `SHIPYARD_*` overrides of scalar settings, the
config path, and `$env` secret references.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = [
    "PREFIX",
    "SECTIONS",
    "config_path_from_env", "export", "get", "overrides", "snapshot"]

PREFIX = "SHIPYARD_"
# Sections whose scalar settings can be overridden: SHIPYARD_<SECTION>_<KEY>. Other SHIPYARD_*
# variables (SHIPYARD_API_KEY, SHIPYARD_CONFIG, your own secret names) are left alone.
SECTIONS = ("server", "store", "traces")


def get(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Return one environment variable (used for `{$env: NAME}` references)."""
    return (os.environ if environ is None else environ).get(name)


def config_path_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """`SHIPYARD_CONFIG`: where `shipyard.yaml` lives when `--config` is not given."""
    return get("SHIPYARD_CONFIG", environ)


def overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return `SHIPYARD_<SECTION>_<KEY>=value` variables as `{"section_key": value}`."""
    env = os.environ if environ is None else environ
    prefixes = tuple(f"{PREFIX}{section.upper()}_" for section in SECTIONS)
    return {
        name[len(PREFIX) :].lower(): value
        for name, value in env.items()
        if name.startswith(prefixes)
    }


def snapshot() -> dict[str, str]:
    """A copy of the environment, for code that passes it on (`load_config(environ=...)`)."""
    return dict(os.environ)


def export(name: str, value: str) -> None:
    """Set a variable for child processes (worker processes read SHIPYARD_CONFIG)."""
    os.environ[name] = value
