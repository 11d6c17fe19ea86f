"""The `shipyard.yaml` schema: every setting declared once, with its type, default and help.

The models below are the settings table. `iter_settings()` walks them, the configuration
reference in `docs/configuration.md` is generated from it, and a test fails when a setting is
not documented.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "AuthConfig",
    "CaptureMode",
    "Config",
    "ModelConfig",
    "ProviderConfig",
    "ServerConfig",
    "ServiceConfig",
    "Setting",
    "StoreConfig",
    "TracesConfig",
    "iter_settings",
]

CaptureMode = Literal["none", "metadata", "full"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = Field("127.0.0.1", description="Interface `shipyard serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port `shipyard serve` listens on.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes for `shipyard serve`.")
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body accepted, in bytes; larger bodies get 413.",
    )
    metrics_public: bool = Field(
        False,
        description="Serve `/metrics` without an API key (for a scraper on a private network).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the gateway and its access log."
    )
    access_log: bool = Field(False, description="Write one uvicorn access-log line per request.")


class StoreConfig(_Section):
    url: str = Field(
        "sqlite:///.shipyard/shipyard.db",
        description=(
            "SQLAlchemy URL of the store: SQLite (WAL) by default, or "
            "`postgresql+psycopg://user@host:5432/db` (install `shipyard[postgres]`)."
        ),
    )
    migrate: bool = Field(
        True, description="Run Alembic migrations to the latest revision at startup."
    )

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(
                "must be a SQLAlchemy URL starting with 'sqlite:///' or 'postgresql+psycopg://'"
            )
        return value


class TracesConfig(_Section):
    enabled: bool = Field(True, description="Record a trace for every request.")
    queue_size: int = Field(
        10_000,
        ge=100,
        description="Bounded in-memory queue between requests and the trace writer; overflow "
        "is counted in `shipyard_trace_queue_dropped_total` and logged.",
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Traces written per transaction.")
    flush_interval_s: float = Field(
        0.2, gt=0, le=60, description="Longest a trace waits in the queue before it is written."
    )
    max_payload_chars: int = Field(
        32_768,
        ge=0,
        description="With `capture: full`, payloads longer than this are truncated (and marked).",
    )


class AuthConfig(_Section):
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Static API keys accepted as `Authorization: Bearer <key>`. Reference "
        "them as `{$env: NAME}` or `{$file: path}`; never inline a secret.",
    )
    disabled: bool = Field(
        False,
        description="Serve without authentication. Only for a laptop: every route is open.",
    )

    @model_validator(mode="after")
    def _keys_or_disabled(self) -> AuthConfig:
        if not self.api_keys and not self.disabled:
            raise ValueError(
                "no API keys are configured; add 'auth.api_keys: [{$env: SHIPYARD_API_KEY}]' "
                "or set 'auth.disabled: true' for a local-only setup"
            )
        for key in self.api_keys:
            if len(key.get_secret_value()) < 8:
                raise ValueError("every API key must be at least 8 characters long")
        return self


class ProviderConfig(_Section):
    kind: Literal["openai", "python", "sim"] = Field(
        description="`openai` (any OpenAI-compatible HTTP upstream), `python` (a "
        "`module:function`) or `sim` (the built-in simulated model, in process)."
    )
    base_url: str | None = Field(
        None,
        description="openai: base URL of the upstream API, ending in `/v1`, e.g. "
        "`http://127.0.0.1:9100/v1`.",
    )
    api_key: SecretStr | None = Field(
        None, description="openai: upstream API key, as `{$env: NAME}` or `{$file: path}`."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="openai: extra headers sent with every upstream call (values may be secret "
        "references, e.g. Azure's `api-key: {$env: AZURE_OPENAI_KEY}`).",
    )
    query: dict[str, str] = Field(
        default_factory=dict,
        description="openai: query parameters added to every upstream URL, e.g. Azure's "
        "`api-version: 2024-10-21`.",
    )
    function: str | None = Field(
        None, description="python: the callable as `package.module:function` (sync or async)."
    )
    timeout_s: float = Field(
        600.0, gt=0, description="Total time one upstream call may take, in seconds."
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Time to open a connection to the upstream, in seconds."
    )
    max_connections: int = Field(
        256, ge=1, description="openai: size of the keep-alive connection pool to the upstream."
    )
    stream_usage: bool = Field(
        True,
        description="openai: ask the upstream for usage in streams "
        "(`stream_options.include_usage`) so token counts are exact; the extra usage event is "
        "removed when the client did not ask for it. Turn off for upstreams that reject it.",
    )
    latency_ms: float = Field(
        0.0, ge=0, description="sim: fixed latency before the first token, in milliseconds."
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> ProviderConfig:
        if self.kind == "openai":
            if not self.base_url:
                raise ValueError(
                    "kind 'openai' needs 'base_url', e.g. base_url: http://127.0.0.1:9100/v1"
                )
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError(
                    f"base_url '{self.base_url}' must start with http:// or https://"
                )
        if self.kind == "python" and not (self.function and _FUNCTION.match(self.function)):
            raise ValueError(
                "kind 'python' needs 'function' as 'package.module:function', "
                f"got {self.function!r}"
            )
        return self


class ModelConfig(_Section):
    provider: str = Field(description="Name of an entry under `providers`.")
    model: str | None = Field(
        None, description="Model name sent upstream; defaults to the alias itself."
    )
    type: Literal["chat", "embedding"] = Field(
        "chat", description="`chat` (chat and legacy completions) or `embedding`."
    )
    capture: CaptureMode = Field(
        "metadata",
        description="What traces keep of payloads: `none` (no payload facts), `metadata` "
        "(sizes, counts, finish reason) or `full` (request and response bodies).",
    )
    owned_by: str = Field("shipyard", description="`owned_by` shown in `GET /v1/models`.")


class ServiceConfig(_Section):
    kind: Literal["python"] = Field(
        "python", description="`python`: serve a Python callable at /v1/services/NAME/invoke."
    )
    function: str = Field(description="The callable as `package.module:function`.")
    input_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema the request body must match (or use `input_model`)."
    )
    input_model: str | None = Field(
        None, description="A pydantic model as `package.module:Model` that validates the input."
    )
    capture: CaptureMode = Field("metadata", description="Payload capture policy for traces.")
    timeout_s: float = Field(60.0, gt=0, description="Longest one call may run, in seconds.")
    description: str = Field("", description="Shown in the service listing.")

    @field_validator("function", "input_model")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and not _FUNCTION.match(value):
            raise ValueError(f"must look like 'package.module:name', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_schema(self) -> ServiceConfig:
        if self.input_schema is not None and self.input_model is not None:
            raise ValueError("set either 'input_schema' or 'input_model', not both")
        return self


def _names_ok(kind: str, names: Iterator[str]) -> None:
    for name in names:
        if not _NAME.match(name):
            raise ValueError(
                f"{kind} name {name!r} may use letters, digits and . _ : - (at most 128 chars)"
            )


class Config(_Section):
    """A validated `shipyard.yaml`; build it with `load_config` or `parse_config`.

    >>> Config().server.port
    8000
    """

    version: Literal[1] = Field(1, description="Version of the configuration format.")
    python_path: list[str] = Field(
        default_factory=list,
        description="Folders added to the import path before `module:function` references "
        "are imported; relative paths are relative to the config file.",
    )
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    store: StoreConfig = Field(default_factory=lambda: StoreConfig())
    traces: TracesConfig = Field(default_factory=lambda: TracesConfig())
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

    @model_validator(mode="after")
    def _references(self) -> Config:
        _names_ok("provider", iter(self.providers))
        _names_ok("model", iter(self.models))
        _names_ok("service", iter(self.services))
        for alias, model in self.models.items():
            if model.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none are defined"
                raise ValueError(
                    f"models.{alias}.provider is '{model.provider}', which is not a provider "
                    f"(known: {known}); add it under 'providers' or fix the name"
                )
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
    for prefix in ("typing.", "pydantic.types.", "shipyard.config.schema."):
        text = text.replace(prefix, "")
    return text


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
        if field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        elif field.is_required():
            default = "(required)"
        else:
            default = repr(field.default)
        yield Setting(path, _type_name(annotation), default, field.description or "")

