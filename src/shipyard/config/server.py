"""The `server:`, `store:`, `state:` and `ui:` sections: how the gateway listens, where it keeps
its records and shared state, and the dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from shipyard.config.base import Section

__all__ = [
    "BoundsConfig",
    "ChatPageConfig",
    "CorsConfig",
    "ServerConfig",
    "StateConfig",
    "StateOutageConfig",
    "StoreConfig",
    "UIConfig",
    "per_process_state",
]


class CorsConfig(Section):
    allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins browsers may call the API from (e.g. https://app.example.com). "
        "Empty (the default): no cross-origin access at all.")
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST"],
                                     description="Methods allowed cross-origin.")
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-request-id"],
        description="Request headers allowed cross-origin.")
    allow_credentials: bool = Field(False, description="Allow cookies and HTTP auth.")
    max_age_s: int = Field(600, ge=0, description="How long browsers cache a preflight.")


class BoundsConfig(Section):
    """Upper bounds of size-like request parameters, checked by the gateway on every request
    before anything is forwarded; a request above one gets a 400 naming the parameter and the
    bound. The defaults are OpenAI's own published maxima where it has them."""

    max_n: int = Field(128, ge=1, le=10_000, description="Most choices (`n`) one chat or "
                       "completion request may ask for (OpenAI's maximum: 128).")
    max_tokens: int = Field(
        1_048_576, ge=1, description="Largest `max_tokens` / `max_completion_tokens` accepted "
        "(per model, `limits.max_tokens` can be lower).")
    max_dimensions: int = Field(65_536, ge=1, description="Largest embedding `dimensions`.")
    max_inputs: int = Field(
        2048, ge=1, description="Most inputs in one embeddings request, and most prompts in "
        "one completions request (OpenAI's maximum: 2048).")
    max_input_tokens: int = Field(
        300_000, ge=1, description="Most token ids in one request's token-array `input` or "
        "`prompt`, summed over all inputs (OpenAI's maximum for embeddings: 300,000).")
    max_top_logprobs: int = Field(20, ge=0, description="Largest chat `top_logprobs` "
                                  "(OpenAI's maximum: 20).")
    max_logprobs: int = Field(5, ge=0, description="Largest completions `logprobs` (OpenAI's "
                              "maximum: 5).")
    max_best_of: int = Field(20, ge=1, description="Largest completions `best_of` (OpenAI's "
                             "maximum: 20).")


class ServerConfig(Section):
    """How `shipyard serve` listens."""

    host: str = Field("127.0.0.1", description="Interface `shipyard serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port `shipyard serve` listens on.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes for `shipyard serve`.")
    embedding_threads: int | None = Field(
        1, ge=1, le=256, description="PyTorch threads each process gives the forward pass of "
        "its in-process embedding model (the guards' `embeddings`, the semantic cache). One "
        "request's prompt is one short row: a second thread barely helps it and, on a busy "
        "machine, spins waiting for a core (2 cores at load ~3: 141 ms mean a prompt on two "
        "threads, 14 ms on one; idle, two are ~1.5 ms faster). null: PyTorch's default, one "
        "a core.")
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body accepted, in bytes; larger bodies get 413.",
    )
    max_json_depth: int = Field(
        64, ge=2, le=200, description="Deepest nesting of objects and arrays accepted in a "
        "JSON request body, on every route; deeper bodies get 400 before any other work.")
    bounds: BoundsConfig = Field(
        default_factory=lambda: BoundsConfig(),
        description="Upper bounds of size-like request parameters (`n`, `max_tokens`, "
        "`dimensions`, inputs, `top_logprobs`, ...); above one, 400.")
    metrics_public: bool = Field(
        False,
        description="Serve `/metrics` without an API key (for a scraper on a private network).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the gateway and its access log."
    )
    access_log: bool = Field(False, description="Write one uvicorn access-log line per request.")
    public_url: str | None = Field(
        None,
        description="Base URL people reach this gateway at (e.g. `https://ai.example.com`); "
        "alert notifications link to `{public_url}/ui/alerts/{id}`. Default: "
        "`http://HOST:PORT` from `host` and `port`.")
    max_in_flight: int | None = Field(
        None, ge=1, description="Most requests processed at once in this process (none: no limit)."
    )
    max_queue: int = Field(
        0, ge=0, description="Requests that may wait for a global slot; beyond it, 503 at once."
    )
    max_queue_ms: float = Field(
        1000.0, ge=0, description="Longest a request waits for a global slot before a 503."
    )
    cors: CorsConfig = Field(default_factory=lambda: CorsConfig())
    tls_certfile: str | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS; with `tls_keyfile`.")
    tls_keyfile: str | None = Field(None, description="PEM private key of `tls_certfile`.")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("set both 'tls_certfile' and 'tls_keyfile' to serve HTTPS, or "
                             "neither")
        for name in ("tls_certfile", "tls_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"'{name}' is '{path}', which is not a readable file")
        return self
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: how long in-flight requests (streams too) may finish before "
        "the process exits.",
    )
    drain_grace_s: float = Field(
        2.0, ge=0, le=300,
        description="On SIGTERM, first: for up to this long the server keeps its connections "
        "open and answers every request but the health probes with 503, Retry-After and "
        "`Connection: close` (so clients on kept-alive connections retry elsewhere instead of "
        "being reset); it moves on as soon as every client has closed its connection. Then "
        "`drain_timeout_s` applies.",
    )


class StoreConfig(Section):
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


class ChatPageConfig(Section):
    """A chat page for one hosted service at /chat (works on the base install)."""

    service: str | None = Field(
        None,
        description="The service the page at `/chat` talks to (its input is "
        "`{\"question\": ...}`; it shows `output.answer` and `output.citations`). Unset: no "
        "chat page.",
    )
    title: str = Field("Support", max_length=100, description="The page's heading and title.")


class UIConfig(Section):
    """The dashboard at /ui (needs `pip install 'shipyard[ui]'`) and the chat page at /chat."""

    enabled: bool = Field(True, description="Serve the dashboard at /ui.")
    session_secret: SecretStr | None = Field(
        None,
        description="Secret that signs dashboard session cookies; reference it as "
        "`{$env: NAME}`. Set it when several machines serve the dashboard; without it a random "
        "secret is kept in `ui_session.key` beside the trace spool.",
    )
    session_ttl_s: float = Field(
        28_800.0, gt=0, le=30 * 86400,
        description="How long a dashboard login lasts, in seconds (default 8 hours).",
    )
    chat: ChatPageConfig = Field(default_factory=lambda: ChatPageConfig(),
                                 description="The chat page at /chat.")


class StateOutageConfig(Section):
    rate_limits: Literal["local", "closed"] = Field(
        "local",
        description="Rate limits while Redis is unreachable: `local` (fail open to a limiter "
        "in each process, with the same limits per process) or `closed` (503 with "
        "Retry-After).",
    )
    retry_after_s: int = Field(
        2, ge=1, le=300,
        description="The Retry-After (seconds) of a 503 answered because Redis is "
        "unreachable.",
    )


class StateConfig(Section):
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="Where shared state lives (rate limits, budgets' reservations, circuit "
        "breakers, the response cache, PII conversation tables): `memory` (one process) or "
        "`redis` (shared by every worker and replica; install `shipyard[redis]`).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL when `backend: redis`."
    )
    key_prefix: str = Field("shipyard:", description="Prefix of every Redis key Shipyard writes.")
    timeout_s: float = Field(
        1.0, gt=0, le=30,
        description="Timeout of one Redis operation (and of connecting); past it the feature's "
        "outage policy applies.",
    )
    per_process: bool = Field(
        False,
        description="Accept `server.workers` > 1 on the `memory` backend, where every worker "
        "keeps its own rate limits, breakers, cache and PII conversations (a 60 rpm key gets "
        "60 per worker). Without it such a start is refused.",
    )
    circuit_sync_s: float = Field(
        0.25, gt=0, le=10,
        description="How often each replica reads the circuit breakers other replicas opened "
        "(Redis backend).",
    )
    required_for_ready: bool = Field(
        True,
        description="`/readyz` answers 503 while Redis is unreachable (`false`: it answers 200 "
        "and reports the outage in its checks).",
    )
    on_outage: StateOutageConfig = Field(
        default_factory=lambda: StateOutageConfig(),
        description="What each feature does while Redis is unreachable (see "
        "docs/resilience.md).",
    )


def per_process_state(state: StateConfig, workers: int) -> str | None:
    """Why serving with `workers` processes on this state backend would be wrong, or None.

    Several workers on the `memory` backend each keep their own rate limits, circuit
    breakers, cache and PII conversations, so a 60 rpm key gets 60 per worker: such a start
    is refused unless `state.per_process` accepts it. (Budgets stay exact either way: without
    Redis their ledger is the store, which every worker shares; with SQLite, workers on one
    machine share its file.)
    """
    if workers <= 1 or state.backend != "memory" or state.per_process:
        return None
    return (f"server.workers is {workers} but state.backend is 'memory': every worker would "
            "keep its own rate limits, circuit breakers, response cache and PII conversations "
            f"(a key limited to 60 requests per minute would get {60 * workers}). Set "
            "state.backend: redis (pip install 'shipyard[redis]') so the workers share them, "
            "or set state.per_process: true to accept per-process limits.")
