"""Life after launch: the `lifecycle:` section (artifact store, the rollout controller's tick)
and, per service, its `rollout:` policy and `retrain:` job (docs/lifecycle.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from shipyard.config.base import FUNCTION_PATTERN, Section

__all__ = [
    "GATE_NAMES",
    "CanaryRule",
    "GatesConfig",
    "LifecycleConfig",
    "RetrainConfig",
    "RolloutConfig",
]

# Every gate a rollout policy can state, declared once: the controller, the docs and the
# dashboard derive from it.
GATE_NAMES: tuple[str, ...] = ("error_rate", "latency_p95_ratio", "guard_block_rate",
                               "feedback_score", "eval_score", "drift")


class LifecycleConfig(Section):
    artifact_dir: str | None = Field(
        None, description="Where registered model artifacts are kept, content-addressed "
        "(`sha256/ab/abcdef...`); a relative path is relative to the config file. Default: "
        "`artifacts/` beside a SQLite store, else `.shipyard/artifacts`.")
    tick_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between two evaluations of the running "
        "rollouts (gates, promotion steps) and between two checks for moved aliases.")
    lease_s: float = Field(
        10.0, gt=0, description="With several replicas on one store, one holds the rollout "
        "controller's lease (renewed every tick) and decides; another takes over after this "
        "many seconds without renewal.")
    shadow_concurrency: int = Field(
        8, ge=1, description="Most shadow copies in flight per service; copies beyond it are "
        "skipped and counted (`shipyard_shadow_skipped_total`), never queued on the caller.")


class CanaryRule(Section):
    """A request that matches is sent to the candidate whatever the share."""

    header: str | None = Field(None, description="A request header, e.g. `x-canary`.")
    equals: str | None = Field(None, description="The header's value that selects the "
                               "candidate (default: any value).")
    key: str | None = Field(None, description="An API key id whose requests go to the "
                            "candidate.")
    tenant: str | None = Field(None, description="A tenant whose requests go to the candidate.")

    @model_validator(mode="after")
    def _one(self) -> CanaryRule:
        if sum(v is not None for v in (self.header, self.key, self.tenant)) != 1:
            raise ValueError("a canary rule names exactly one of 'header', 'key' or 'tenant'")
        return self


class GatesConfig(Section):
    """Limits the candidate must keep, compared with the stable version over the window."""

    error_rate: float | None = Field(
        0.02, ge=0, le=1, description="Most the candidate's error rate may exceed stable's "
        "(absolute, 0.02 = two points); null: no gate.")
    latency_p95_ratio: float | None = Field(
        1.5, gt=0, description="Most the candidate's p95 latency may be, as a multiple of "
        "stable's; null: no gate.")
    guard_block_rate: float | None = Field(
        0.05, ge=0, le=1, description="Most the candidate's share of answers blocked or "
        "escalated by guards may exceed stable's; null: no gate.")
    feedback_score: float | None = Field(
        None, description="Most the candidate's mean feedback score may fall below stable's "
        "(e.g. 0.1); needs `min_feedback` scored answers per version.")
    min_feedback: int = Field(20, ge=1, description="Scored feedback needed per version for "
                              "the feedback gate to decide.")
    eval_score: float | None = Field(
        None, description="Least the candidate's stored eval score (`eval_metric`, from "
        "`shipyard eval --store`) may be; a candidate without one fails this gate.")
    eval_metric: str = Field("accuracy", description="The eval metric `eval_score` reads.")
    drift: str | None = Field(
        None, description="A drift check (under `drift.checks`) whose newest result must not "
        "be dataset drift while the rollout runs.")


class RolloutConfig(Section):
    """How traffic moves from the stable version to a candidate, and when it stops."""

    mode: Literal["canary", "shadow"] = Field(
        "canary", description="`canary`: a share of live requests is answered by the "
        "candidate; `shadow`: callers only ever get stable's answer, and a copy of each "
        "request goes to the candidate off the critical path, recorded and compared.")
    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 100.0],
        description="Canary shares in percent, in order; passing every gate at the last "
        "step (100) promotes the candidate to stable.")
    step_s: float = Field(
        60.0, gt=0, description="Least time spent at each step before it may advance.")
    window_s: float = Field(
        300.0, gt=0, description="Gates compare the two versions over the last this many "
        "seconds (within the current step).")
    min_samples: int = Field(
        50, ge=1, description="Requests each version needs in the window before a gate may "
        "decide (a step never advances on fewer).")
    sticky: Literal["conversation", "user", "none"] = Field(
        "conversation", description="`conversation`: one conversation "
        "(`x-shipyard-conversation`) stays on one version, requests without one are drawn "
        "each on its own; `user`: one API key (else tenant) stays on one version; `none`: "
        "every request is drawn anew.")
    rules: list[CanaryRule] = Field(
        default_factory=list, description="Requests that always go to the candidate (a "
        "header, an API key or a tenant), whatever the share.")
    gates: GatesConfig = Field(default_factory=lambda: GatesConfig())
    fallback: bool = Field(
        True, description="When the canary's version fails (a 5xx: it raised or timed out), "
        "answer that request with stable instead; the failure still counts against the "
        "candidate's gates (a trace of route `canary`).")
    auto: bool = Field(True, description="Promote and roll back automatically; false: the "
                       "controller only reports, and people decide.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < s <= 100 for s in value) or value != sorted(value):
            raise ValueError(f"steps is {value}; list increasing percentages in (0, 100], "
                             "e.g. [5, 25, 100]")
        return value


class RetrainConfig(Section):
    """The retraining job of a model service: data → your training function → a new
    version → eval against stable → canary under the rollout policy."""

    function: str = Field(
        description="Your training function as `package.module:function`; it gets the "
        "training dataset (a path to a Parquet file) and the folder to write into, and "
        "returns the path of the new artifact.")
    data: str | None = Field(
        None, description="The base training data (CSV, JSONL or Parquet); relative to the "
        "config file. Labelled feedback and reviewed escalations are added to it.")
    features: list[str] = Field(
        default_factory=list, description="Feature columns of the data, in the order the "
        "model takes them (the service's input `features` array).")
    label: str = Field("label", description="The label column.")
    eval_data: str | None = Field(
        None, description="Held-out rows (same columns) the new version is evaluated on "
        "against stable; relative to the config file. Default: `holdout` of `data`.")
    holdout: float = Field(0.2, gt=0, lt=1, description="Share of the base data kept out "
                           "of training for the evaluation against stable (when `eval_data` "
                           "is not set).")
    schedule_s: float | None = Field(
        None, gt=0, description="Retrain every this many seconds (null: not on a schedule).")
    on_drift: str | None = Field(
        None, description="Retrain when this drift check (under `drift.checks`) reports "
        "dataset drift newer than the last job.")
    feedback_count: int | None = Field(
        None, ge=1, description="Retrain once this many new labelled feedback rows arrived "
        "since the last job.")
    gate: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": -0.01},
        description="Metric → least difference to stable (candidate - stable) the new "
        "version needs on the holdout before its canary starts, e.g. {accuracy: -0.01}.")

    @field_validator("function")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not FUNCTION_PATTERN.match(value):
            raise ValueError(f"must look like 'package.module:function', got {value!r}")
        return value
