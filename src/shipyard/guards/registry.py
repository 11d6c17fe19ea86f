"""Build guard lists from config: built-in guards by name, a team's own by `module:name`.

Options in shipyard.yaml are the keyword arguments of the guard's class; an unknown option
fails at startup naming the config key and the options the guard takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from shipyard.config.trust import GuardsConfig, GuardSpec
from shipyard.errors import ConfigError
from shipyard.guards.base import FunctionGuard, Guard
from shipyard.guards.grounding import GroundingGuard
from shipyard.guards.harmful import HarmfulGuard
from shipyard.guards.injection import InjectionGuard
from shipyard.guards.inputs import InvisibleGuard, LengthGuard, PIIGuard, SecretsGuard, TopicsGuard
from shipyard.guards.outputs import (
    BannedGuard,
    JSONSchemaGuard,
    RefusalGuard,
    SystemPromptLeakGuard,
    ToxicityGuard,
)
from shipyard.guards.runner import GuardList, GuardMetrics, GuardSlot
from shipyard.providers.loading import import_object

__all__ = ["BUILTINS", "build_guard", "build_guard_lists", "register"]

BUILTINS: dict[str, Callable[..., Guard]] = {
    "banned": BannedGuard,
    "grounding": GroundingGuard,
    "harmful": HarmfulGuard,
    "injection": InjectionGuard,
    "invisible": InvisibleGuard,
    "json_schema": JSONSchemaGuard,
    "length": LengthGuard,
    "pii": PIIGuard,
    "refusal": RefusalGuard,
    "secrets": SecretsGuard,
    "system_prompt_leak": SystemPromptLeakGuard,
    "topics": TopicsGuard,
    "toxicity": ToxicityGuard,
}


def register(name: str, factory: Callable[..., Guard]) -> None:
    """Make a guard class available by a short name (a plugin's own guards)."""
    BUILTINS[name] = factory


def build_guard(spec: GuardSpec, where: str) -> Guard:
    """One guard from its spec; `where` is the config key for error messages."""
    factory: Any = BUILTINS.get(spec.guard)
    if factory is None:
        if ":" not in spec.guard:
            raise ConfigError(f"Config key '{where}.guard' is '{spec.guard}', a built-in guard "
                              f"this build does not have (known: {', '.join(sorted(BUILTINS))}).")
        factory = import_object(spec.guard, key=f"{where}.guard")
    if isinstance(factory, Guard):
        if spec.options:
            raise ConfigError(f"Config key '{where}' gives options to '{spec.guard}', which is "
                              "a guard instance; remove the options or point at its class.")
        guard = factory
    elif isinstance(factory, type) and issubclass(factory, Guard):
        guard = _construct(factory, spec, where)
    elif isinstance(factory, type):
        raise ConfigError(f"Config key '{where}.guard' is '{spec.guard}', a class that does not "
                          "subclass shipyard.guards.Guard.")
    elif callable(factory) and spec.guard in BUILTINS:
        guard = _construct(factory, spec, where)
    elif callable(factory):
        if spec.options:
            raise ConfigError(f"Config key '{where}' gives options to the function "
                              f"'{spec.guard}'; a function guard takes none (use a Guard "
                              "subclass for options).")
        guard = FunctionGuard(factory, name=spec.name or spec.guard.rsplit(":", 1)[1])
    else:
        raise ConfigError(f"Config key '{where}.guard' is '{spec.guard}', which is neither a "
                          "Guard subclass nor a function.")
    if spec.name:
        guard.name = spec.name
    elif guard.name == "guard":
        guard.name = spec.guard
    return guard


def _construct(factory: Callable[..., Guard], spec: GuardSpec, where: str) -> Guard:
    try:
        params = dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if p.kind in (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if not takes_any:
        for key in spec.options:
            if key not in accepted:
                raise ConfigError(
                    f"Config key '{where}.{key}' is not an option of guard '{spec.guard}'; its "
                    f"options are: {', '.join(accepted) or 'none'}.")
    try:
        return factory(**spec.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Config key '{where}' (guard '{spec.guard}') is invalid: {exc}") \
            from None


def build_guard_lists(config: GuardsConfig, where: str, *, target: str,
                      metrics: GuardMetrics | None = None) -> tuple[GuardList, GuardList]:
    """The input and output guard lists of one model alias or service; trips and run times
    go to `metrics` (the gateway's `Metrics`) when given.

    >>> from shipyard.config.trust import GuardsConfig
    >>> inputs, outputs = build_guard_lists(GuardsConfig(), "models.m.guards", target="m")
    >>> bool(inputs), bool(outputs)
    (False, False)
    """
    lists = []
    for stage, specs in (("input", config.input), ("output", config.output)):
        slots = []
        for i, spec in enumerate(specs):
            key = f"{where}.{stage}[{i}]"
            guard = build_guard(spec, key)
            timeout = next(t for t in (spec.timeout_ms, guard.timeout_ms, config.timeout_ms)
                           if t is not None)
            policy = spec.on_error or config.on_error
            slots.append(GuardSlot(guard, timeout_s=timeout / 1000.0,
                                   fail_closed=policy == "closed", on_trip=spec.on_trip,
                                   retries=spec.retries))
        lists.append(GuardList(slots, stage, target=target, metrics=metrics))  # type: ignore[arg-type]
    return lists[0], lists[1]
