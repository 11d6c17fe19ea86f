"""Import `package.module:name` references from config, with errors that say what to fix."""

from __future__ import annotations

import importlib
from typing import Any

from shipyard.errors import ConfigError

__all__ = ["import_object"]


def import_object(reference: str, *, key: str) -> Any:
    """Import `package.module:attr` (attr may be dotted). `key` names the config key."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"Config key '{key}' is '{reference}', but module '{exc.name}' cannot be imported; "
            "install it or add its folder to PYTHONPATH."
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"Config key '{key}' is '{reference}', but importing '{module_name}' raised "
            f"{type(exc).__name__}: {exc}. Fix the module so it imports cleanly."
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"Config key '{key}' is '{reference}', but '{module_name}' has no attribute "
                f"'{attr}'; check the name after the colon."
            ) from None
    return obj
