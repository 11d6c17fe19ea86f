"""`engine: ray` without a cluster: config validation names the key, the value and the fix;
what a service's placement becomes in Ray Serve's deployment options (bounded queues, the
spec hash that makes redeploying the same version a no-op); the data engine's runner seam."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from shipyard.config.engines import RayConfig, RayPlacement
from shipyard.config.loader import parse_config
from shipyard.config.targets import ServiceConfig
from shipyard.data.config import parse_pipeline
from shipyard.data.pipeline import in_process, run_pipeline
from shipyard.engines.ray.cluster import python_path_env
from shipyard.engines.ray.replica import Replica, VersionSpec
from shipyard.engines.ray.serving import RayServing
from shipyard.errors import ConfigError
from shipyard.lifecycle.serving import load_function
from shipyard.observe.metrics import Metrics


def _service(**ray: object) -> ServiceConfig:
    return ServiceConfig(function="json:dumps", engine="ray", ray=ray)


def test_ray_settings_need_engine_ray() -> None:
    with pytest.raises(ValidationError, match="only apply to 'engine: ray'; add engine: ray"):
        ServiceConfig(function="json:dumps", ray={"replicas": 2})


def test_replicas_or_autoscaling_not_both_and_bounds_in_order() -> None:
    with pytest.raises(ValidationError, match="either 'replicas'"):
        _service(replicas=2, autoscaling={"min_replicas": 1, "max_replicas": 3})
    with pytest.raises(ValidationError, match=r"min_replicas \(5\) is above max_replicas \(2\)"):
        _service(autoscaling={"min_replicas": 5, "max_replicas": 2})
    with pytest.raises(ValidationError, match="initial_replicas"):
        _service(autoscaling={"min_replicas": 1, "max_replicas": 2, "initial_replicas": 3})


def test_queues_are_never_unbounded() -> None:
    with pytest.raises(ValidationError, match="max_queued_requests"):
        _service(max_queued_requests=-1)
    with pytest.raises(ValidationError, match="max_ongoing_requests"):
        _service(max_ongoing_requests=0)


def test_a_bad_address_names_the_forms_that_work() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("ray: {address: 'http://head:8265'}\n")
    assert "ray.address" in str(caught.value) and "ray://HOST:10001" in str(caught.value)
    for good in ("auto", "local", "10.0.0.5:6379", "ray://head.svc:10001", "head-svc:6379"):
        assert RayConfig(address=good).address == good


def test_python_path_goes_first_on_the_workers_pythonpath() -> None:
    env = python_path_env({"pip": ["x"]}, ["/app/code"])
    assert env == {"pip": ["x"], "env_vars": {"PYTHONPATH": "/app/code:${PYTHONPATH}"}}
    assert python_path_env({"pip": ["x"]}, []) == {"pip": ["x"]}


def _serving(**config: object) -> RayServing:
    return RayServing(RayConfig(**config), python_path=["/app"], metrics=Metrics())


def test_placement_becomes_ray_serve_options() -> None:
    serving = _serving()
    version = load_function("json:dumps", key="k", label="3", number=3)
    spec = VersionSpec.of("scorer", version, timeout_s=5)
    fixed = serving._options(RayPlacement(replicas=2, num_cpus=0.5, max_queued_requests=8),
                             spec)
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["max_queued_requests"] == 8 and fixed["max_ongoing_requests"] == 4
    assert fixed["ray_actor_options"]["num_cpus"] == 0.5
    assert fixed["ray_actor_options"]["runtime_env"]["env_vars"]["PYTHONPATH"].startswith(
        "/app:")
    scaled = serving._options(RayPlacement(autoscaling={"min_replicas": 1, "max_replicas": 3}),
                              spec)
    assert scaled["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in scaled
    # The same spec hashes the same (a redeploy is a no-op); any change deploys anew.
    again = serving._options(RayPlacement(replicas=2, num_cpus=0.5, max_queued_requests=8),
                             spec)
    assert again["user_config"] == fixed["user_config"] != scaled["user_config"]
    other = VersionSpec.of("scorer", load_function("json:loads", key="k", label="3"),
                           timeout_s=5)
    assert serving._options(RayPlacement(replicas=2, num_cpus=0.5, max_queued_requests=8),
                            other)["user_config"] != fixed["user_config"]


def test_application_names_are_per_prefix_service_and_version() -> None:
    serving = _serving(app_prefix="prod")
    assert serving.app_name("fraud:v2.score", "7") == "prod-fraud-v2-score-v7"
    assert serving.app_name("fraud", "config") == "prod-fraud-config"


def test_the_replica_answers_like_the_function_and_returns_failures_as_values() -> None:
    spec = VersionSpec("svc", "1", reference="json:loads", timeout_s=5)
    replica = Replica(spec)
    assert asyncio.run(replica('{"a": 1}', None)) == {"a": 1}
    failed = asyncio.run(replica("not json", None))
    assert failed.status == 500 and "JSONDecodeError" in failed.message


def test_every_engine_processes_batches_the_same(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,name\n1,a\n2,b\n2,b\n3,\n")
    config = parse_pipeline(
        "name: t\nsource: {path: in.csv, batch_size: 1}\nschema:\n  columns:\n"
        "    id: {type: int, unique: true}\n    name: {type: string, required: true}\n",
        base_dir=tmp_path)
    seen: list[int] = []

    def counting(config: object, jobs: object) -> object:
        def wrapped() -> object:
            for job in jobs:  # type: ignore[attr-defined]
                seen.append(job[2])
                yield job
        return in_process(config, wrapped())  # type: ignore[arg-type]

    local = run_pipeline(config, dry_run=True)
    other = run_pipeline(config, dry_run=True, runner=counting, engine="test")  # type: ignore[arg-type]
    assert seen == [1, 2, 3, 4]  # first row ids in read order, one batch per row
    assert other.engine == "test"
    for key in ("rows", "quarantine_by_rule", "duplicate_clusters"):
        assert other.to_dict()[key] == local.to_dict()[key]
    assert local.rows_quarantined == 1 and local.duplicates_removed == 1
