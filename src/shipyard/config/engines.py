"""Where work runs: the `ray:` section (the Ray cluster the gateway and `shipyard data` use)
and a service's `ray:` placement (`engine: ray`: replicas or autoscaling bounds, resources,
bounded queues).

>>> RayPlacement.model_validate({"autoscaling": {"min_replicas": 1, "max_replicas": 4}}
...                             ).autoscaling.max_replicas
4
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from shipyard.config.base import Section

__all__ = ["ENGINES", "Engine", "RayAutoscaling", "RayConfig", "RayPlacement"]

# Where a service's function runs, declared once (config validation and docs derive from it).
Engine = Literal["process", "ray"]
ENGINES: tuple[str, ...] = ("process", "ray")

_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/]+|[A-Za-z0-9.\-\[\]:]+:\d+)$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}$")


class RayConfig(Section):
    """The Ray cluster: where `engine: ray` services are deployed (Ray Serve) and where
    `shipyard data run --engine ray` runs (see docs/ray.md)."""

    address: str = Field(
        "auto", description="The cluster: `auto` (the `RAY_ADDRESS` environment variable, "
        "else a cluster started on this machine with `ray start --head`), `HOST:PORT` (the "
        "head's GCS address), `ray://HOST:10001` (Ray Client, for a remote cluster), or "
        "`local` (a private cluster inside the gateway process: development only).")
    namespace: str = Field(
        "shipyard", description="Ray namespace of the gateway's connection (Ray Serve "
        "applications are cluster-wide; `app_prefix` keeps configs apart).")
    app_prefix: str = Field(
        "shipyard", description="Prefix of the Ray Serve application names "
        "(`PREFIX-SERVICE-vVERSION`); give each Shipyard deployment sharing a cluster its own.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Ray runtime environment of every replica (e.g. "
        "`{pip: [...]}`, `{working_dir: ...}` for a remote cluster); `python_path` folders are "
        "added to `PYTHONPATH` on top.")
    status_interval_s: float = Field(
        5.0, gt=0, le=300, description="How often the gateway reads Ray Serve's status: "
        "replica counts and health, autoscaling decisions (metrics, dashboard, "
        "`shipyard status`).")
    deploy_timeout_s: float = Field(
        300.0, gt=0, description="Longest a version's deployment may take to become healthy "
        "before the previous version keeps serving and the error is reported.")
    retire_after_s: float = Field(
        60.0, ge=0, description="A version no plan serves any more is deleted from the "
        "cluster this long after it stopped serving (requests in flight on it finish, and "
        "other gateway replicas catch up with the registry first).")
    local_num_cpus: int | None = Field(
        None, ge=1, description="address `local` only: CPUs of the private cluster.")
    local_object_store_mb: int = Field(
        200, ge=80, description="address `local` only: object store memory of the private "
        "cluster, in MiB.")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"address {value!r} is not a Ray address; use auto, local, "
                             "HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:10001")
        return value

    @field_validator("app_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.match(value):
            raise ValueError(f"app_prefix {value!r} must be a letter followed by up to 31 "
                             "letters, digits or dashes, e.g. shipyard-prod")
        return value


class RayAutoscaling(Section):
    """Ray Serve autoscaling bounds of a service's deployment."""

    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas (0 scales to "
                              "zero: the first request after idling waits for a replica).")
    max_replicas: int = Field(2, ge=1, le=1000, description="Most replicas.")
    initial_replicas: int | None = Field(None, ge=0, le=1000,
                                         description="Replicas at deployment (default: "
                                         "min_replicas).")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Requests each replica should be working on; the autoscaler "
        "adds replicas above it and removes them below it.")
    upscale_delay_s: float = Field(5.0, ge=0, description="How long load must stay above "
                                   "the target before replicas are added.")
    downscale_delay_s: float = Field(30.0, ge=0, description="How long load must stay below "
                                     "the target before replicas are removed.")
    metrics_interval_s: float = Field(2.0, gt=0, description="How often replicas report "
                                      "their load to the autoscaler.")
    look_back_period_s: float = Field(10.0, gt=0, description="Window the autoscaler "
                                      "averages the load over.")

    @model_validator(mode="after")
    def _bounds(self) -> RayAutoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas "
                             f"({self.max_replicas}); lower min_replicas or raise "
                             "max_replicas")
        if self.initial_replicas is not None and not (
                self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError(f"initial_replicas ({self.initial_replicas}) must lie between "
                             f"min_replicas ({self.min_replicas}) and max_replicas "
                             f"({self.max_replicas})")
        return self


class RayPlacement(Section):
    """How an `engine: ray` service runs on the cluster: a Ray Serve deployment per version,
    reached through a deployment handle behind the gateway's chain (limits, guards, PII,
    traces and versions stay in front)."""

    replicas: int | None = Field(
        None, ge=1, le=1000, description="A fixed number of replicas (default 1 without "
        "`autoscaling`); set either this or `autoscaling`.")
    autoscaling: RayAutoscaling | None = Field(
        None, description="Autoscaling bounds instead of a fixed `replicas`.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved by each replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved by each replica.")
    memory_mb: int | None = Field(None, ge=1, description="Memory reserved by each replica, "
                                  "in MiB (Ray schedules on it; it is not a hard limit).")
    max_ongoing_requests: int = Field(
        4, ge=1, le=10_000, description="Requests one replica works on at once; more wait in "
        "the handle's queue.")
    max_queued_requests: int = Field(
        32, ge=1, le=100_000, description="Requests that may wait for a replica (per gateway "
        "process); one more is refused at once with 503 and Retry-After. Never unbounded.")
    retry_after_s: int = Field(1, ge=1, le=3600, description="`Retry-After` of a 503 when "
                               "the queue is full or no replica is up.")
    retries: int = Field(
        1, ge=0, le=5, description="Times a call is sent again when its replica died while "
        "working on it (another replica answers); 0 turns it off for functions that must not "
        "run twice.")
    graceful_shutdown_s: float = Field(
        20.0, ge=0, description="How long a replica that is being removed (scale down, new "
        "version) may finish its requests before it is stopped.")
    health_check_period_s: float = Field(5.0, gt=0, description="How often Ray checks each "
                                         "replica's health.")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime "
                                        "environment of this service's replicas, merged over "
                                        "the cluster's `ray.runtime_env`.")

    @model_validator(mode="after")
    def _one_scale(self) -> RayPlacement:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set either 'replicas' (a fixed number) or 'autoscaling' "
                             "(min_replicas/max_replicas), not both")
        return self

    @property
    def scale(self) -> str:
        """How the deployment scales, for status and docs: `2 replicas` or `1-4 replicas`."""
        if self.autoscaling is not None:
            return f"{self.autoscaling.min_replicas}-{self.autoscaling.max_replicas} replicas"
        return f"{self.replicas or 1} replicas"

