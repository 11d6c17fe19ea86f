"""The public surface of `shipyard` is pinned: changing it is a deliberate, reviewed act."""

from __future__ import annotations

import inspect
import re

import shipyard

PUBLIC = [
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


def test_all_is_pinned() -> None:
    assert shipyard.__all__ == PUBLIC


def test_all_is_sorted_and_unique() -> None:
    assert shipyard.__all__ == sorted(shipyard.__all__)
    assert len(set(shipyard.__all__)) == len(shipyard.__all__)


def test_every_name_resolves() -> None:
    for name in shipyard.__all__:
        assert getattr(shipyard, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from shipyard import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC)


def test_version_is_a_version_string() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", shipyard.__version__)


def test_public_callables_have_docstrings() -> None:
    for name in shipyard.__all__:
        obj = getattr(shipyard, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert (obj.__doc__ or "").strip(), f"shipyard.{name} has no docstring"
