"""The `shipyard.yaml` schema: every setting declared once, with its type, default and help.

The models below are the settings table. `iter_settings()` walks them, the configuration
reference in `docs/configuration.md` is generated from it, and a test fails when a setting is
not documented.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from shipyard.config.alerting import AlertsConfig, SLOConfig, check_alert_references
from shipyard.config.base import NAME_PATTERN, Section
from shipyard.config.connectors import AnyConnector
from shipyard.config.drift import DriftConfig
from shipyard.config.engines import RayConfig
from shipyard.config.jobs import BatchesConfig, JobsConfig
from shipyard.config.lifecycle import LifecycleConfig
from shipyard.config.security import AuthConfig, BudgetConfig, PriceConfig, RateLimitsConfig
from shipyard.config.server import ServerConfig, StateConfig, StoreConfig, UIConfig
from shipyard.config.targets import ModelConfig, ProviderConfig, ServiceConfig, StageSpec
from shipyard.config.traces import TracesConfig
from shipyard.config.work import WebhooksConfig, WorkConfig

__all__ = ["Config", "Setting", "iter_settings"]


def _names_ok(kind: str, names: Iterator[str]) -> None:
    for name in names:
        if not NAME_PATTERN.match(name):
            raise ValueError(
                f"{kind} name {name!r} may use letters, digits and . _ : - (at most 128 chars)"
            )


class Config(Section):
    """A validated `shipyard.yaml`; build it with `load_config` or `parse_config`.

    >>> Config().server.port
    8000
    """

    # Keys whose secret was written inline (set by the loader; `loader.inline_secrets`).
    _inline_secrets: list[str] = PrivateAttr(default_factory=list)

    version: Literal[1] = Field(1, description="Version of the configuration format.")
    python_path: list[str] = Field(
        default_factory=list,
        description="Folders added to the import path before `module:function` references "
        "are imported; relative paths are relative to the config file.",
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Modules imported at start-up, before guards and stages are built (after "
        "`python_path`), e.g. one that calls `shipyard.guards.register(\"mine\", MyGuard)`.")
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    store: StoreConfig = Field(default_factory=lambda: StoreConfig())
    traces: TracesConfig = Field(default_factory=lambda: TracesConfig())
    state: StateConfig = Field(default_factory=lambda: StateConfig())
    ui: UIConfig = Field(default_factory=lambda: UIConfig())
    rate_limits: RateLimitsConfig = Field(default_factory=lambda: RateLimitsConfig())
    pricing: dict[str, PriceConfig] = Field(
        default_factory=dict,
        description="Prices by model alias or upstream model name, adding to or overriding the "
        "shipped table (`shipyard.security.pricing`).")
    budgets: list[BudgetConfig] = Field(
        default_factory=list, description="Spend caps per tenant or key and period.")
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig(disabled=True))
    providers: dict[str, ProviderConfig] = Field(
        default_factory=dict, description="Upstreams by name."
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=dict, description="Model aliases clients call, by alias."
    )
    services: dict[str, ServiceConfig] = Field(
        default_factory=dict, description="Hosted Python services, by name."
    )
    alerts: AlertsConfig = Field(default_factory=lambda: AlertsConfig(),
                                 description="Alert rules and notification channels "
                                 "(see docs/alerts.md).")
    slos: list[SLOConfig] = Field(default_factory=list, description="Service level objectives "
                                  "with error budgets and burn-rate alerts (see docs/alerts.md).")
    drift: DriftConfig = Field(default_factory=lambda: DriftConfig())
    lifecycle: LifecycleConfig = Field(
        default_factory=lambda: LifecycleConfig(),
        description="Versions, rollouts and retraining (see docs/lifecycle.md).")
    stages: list[StageSpec] = Field(
        default_factory=list,
        description="Your own pipeline stages, in every model's and service's chain (after "
        "limits, admission, PII and input guards; before the cache and the target). See "
        "docs/architecture.md.")
    work: WorkConfig = Field(default_factory=lambda: WorkConfig())
    ray: RayConfig = Field(default_factory=lambda: RayConfig(),
                           description="The Ray cluster of `engine: ray` services and "
                           "`shipyard data run --engine ray` (see docs/ray.md).")
    webhooks: WebhooksConfig = Field(default_factory=lambda: WebhooksConfig())
    connectors: dict[str, AnyConnector] = Field(
        default_factory=dict, description="Queue consumers, SQL scoring and file drops, by "
        "name, each run through a target (see docs/integration.md#connectors).")
    jobs: JobsConfig = Field(default_factory=lambda: JobsConfig(),
                             description="Durable jobs (see docs/integration.md).")
    batches: BatchesConfig = Field(default_factory=lambda: BatchesConfig(),
                                   description="The Batch and Files APIs (see "
                                   "docs/integration.md).")

    @model_validator(mode="after")
    def _references(self) -> Config:
        check_alert_references(self.alerts, self.slos)
        _names_ok("provider", iter(self.providers))
        _names_ok("model", iter(self.models))
        _names_ok("service", iter(self.services))
        _names_ok("connector", iter(self.connectors))
        for name, connector in self.connectors.items():
            reached = connector.target
            if reached is None:
                continue
            known_targets: dict[str, Any] = dict(self.services if reached.service
                                                 else self.models)
            if reached.name not in known_targets:
                what = "service" if reached.service else "model"
                raise ValueError(
                    f"connectors.{name}.target.{what} is '{reached.name}', which is not a "
                    f"{what} (known: {', '.join(sorted(known_targets)) or 'none'}); add it "
                    f"under '{what}s' or fix the name")
        known = ", ".join(sorted(self.providers)) or "none are defined"
        for alias, model in self.models.items():
            for i, target in enumerate(model.targets(alias)):
                if target.provider not in self.providers:
                    where = (f"models.{alias}.deployments[{i}].provider" if model.deployments
                             else f"models.{alias}.provider")
                    raise ValueError(
                        f"{where} is '{target.provider}', which is not a provider "
                        f"(known: {known}); add it under 'providers' or fix the name"
                    )
            for fallback in model.fallbacks:
                if fallback == alias or fallback not in self.models:
                    raise ValueError(
                        f"models.{alias}.fallbacks names '{fallback}', which is not another "
                        f"model alias (known: {', '.join(sorted(self.models))})"
                    )
                if self.models[fallback].type != model.type:
                    raise ValueError(
                        f"models.{alias}.fallbacks names '{fallback}', a "
                        f"{self.models[fallback].type} model; fallbacks must be {model.type} models"
                    )
        targets = ", ".join(sorted({*self.models, *self.services})) or "none"
        for name in self.jobs.targets:
            if name not in self.models and name not in self.services:
                raise ValueError(
                    f"jobs.targets names '{name}', which is neither a model alias nor a "
                    f"service (known: {targets}); fix the name or remove the entry")
        for name, service in self.services.items():
            for key, check in (("rollout.gates.drift", service.rollout.gates.drift),
                               ("retrain.on_drift",
                                service.retrain.on_drift if service.retrain else None)):
                if check is not None and check not in self.drift.checks:
                    raise ValueError(
                        f"services.{name}.{key} is '{check}', which is not a drift check "
                        f"(known: {', '.join(sorted(self.drift.checks)) or 'none'}); add it "
                        "under drift.checks or fix the name")
        return self


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    path: str
    type: str
    default: str
    help: str


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is not None:
        text = str(annotation)
    else:
        text = getattr(annotation, "__name__", None) or str(annotation)
    text = re.sub(r"shipyard\.config\.\w+\.", "", text)
    for prefix in ("typing.", "pydantic.types."):
        text = text.replace(prefix, "")
    return text


def _kinds(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The models of an `Annotated[A | B, discriminator]` union, with their `kind`."""
    union = get_args(annotation)[0] if get_origin(annotation) is Annotated else None
    found: list[tuple[str, type[BaseModel]]] = []
    for member in get_args(union) if union is not None else ():
        if isinstance(member, type) and issubclass(member, BaseModel):
            kind = get_args(member.model_fields["kind"].annotation)
            found.append((str(kind[0]) if kind else member.__name__, member))
    return found


def iter_settings(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[Setting]:
    """Yield every setting of `shipyard.yaml`, depth first, as (path, type, default, help)."""
    nested: dict[str, tuple[str, type[BaseModel]]] = {
        "providers": ("providers.NAME", ProviderConfig),
        "models": ("models.ALIAS", ModelConfig),
        "services": ("services.NAME", ServiceConfig),
    }
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if model is Config and name in nested:
            sub_prefix, sub_model = nested[name]
            yield from iter_settings(sub_model, sub_prefix + ".")
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from iter_settings(annotation, path + ".")
            continue
        args = getattr(annotation, "__args__", ())
        kinds = _kinds(args[-1]) if get_origin(annotation) is dict and args else []
        if kinds:  # a dict of sections told apart by their `kind` (connectors)
            yield Setting(path, "dict", "{}", field.description or "")
            for kind, sub_model in kinds:
                yield from iter_settings(sub_model, f"{path}.NAME(kind={kind}).")
            continue
        optional = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(args) == 2 and type(None) in args and optional:  # an optional section
            yield Setting(path, f"{optional[0].__name__} | None", "None", field.description or "")
            yield from iter_settings(optional[0], path + ".")
            continue
        item = args[-1] if get_origin(annotation) is dict and args else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            yield Setting(path, "dict", "{}", field.description or "")
            yield from iter_settings(item, path + ".NAME.")
            continue
        if (get_origin(annotation) is list and args and isinstance(args[0], type)
                and issubclass(args[0], BaseModel)):
            yield Setting(path, "list", "[]", field.description or "")
            yield from iter_settings(args[0], path + "[].")
            continue
        if field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        elif field.is_required():
            default = "(required)"
        else:
            default = repr(field.default)
        yield Setting(path, _type_name(annotation), default, field.description or "")
