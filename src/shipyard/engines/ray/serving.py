"""Services on Ray Serve (`engine: ray`): each version of a service is a Ray Serve
application (`PREFIX-SERVICE-vN`, one deployment of `Replica`), called through a deployment
handle from the service's terminal step. The gateway's chain — authentication, limits,
admission, PII, guards, cache, version routing, traces — stays in front; only the function
runs on the cluster.

Versions: the lifecycle controller loads a new plan, `prepare` deploys every version in it
and waits until each is healthy, and only then is the plan swapped in, so a rollout never
routes a request to a version that is not up. Requests that chose the old version finish on
it; it is deleted `ray.retire_after_s` after no plan serves it. Redeploying a spec Ray already
runs (another gateway replica, a restart) is a no-op: the deployment's `version` is the hash
of everything that defines it.

Bounded queues: each replica works on `max_ongoing_requests` at once and each gateway's
handle holds at most `max_queued_requests` waiting; one more is refused at once with Ray's
BackPressureError, answered as 503 with Retry-After — never an unbounded queue. A call whose
replica died while working on it is sent again (`retries`), so killing a replica loses no
request. Replica states, the autoscaler's target and its decisions are read every
`ray.status_interval_s` into metrics, `shipyard status` and the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shipyard.config.engines import RayConfig, RayPlacement
from shipyard.config.targets import ServiceConfig
from shipyard.engines.ray.cluster import connect, import_ray, python_path_env
from shipyard.engines.ray.replica import Failure, Replica, VersionSpec
from shipyard.errors import (
    CapacityError,
    ConfigError,
    ServiceError,
    ShipyardError,
    UpstreamTimeout,
)
from shipyard.lifecycle.serving import LoadedVersion, Plan, VersionRouter
from shipyard.observe.metrics import Metrics
from shipyard.pipeline import invocation

__all__ = ["RayRunner", "RayServing"]

log = logging.getLogger("shipyard.engines.ray")
DEPLOYMENT = "replica"
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
# Ray Serve's application and deployment states that mean "will not become healthy".
_FAILED = {"DEPLOY_FAILED", "UNHEALTHY"}


@dataclass
class _App:
    """A version deployed (or known deployed) on the cluster by this process."""

    name: str
    service: str
    label: str
    spec_hash: str
    handle: Any = None
    unused_since: float | None = None


@dataclass
class _Snapshot:
    """The last status read of one application."""

    status: str = "UNKNOWN"
    deployment_status: str = "UNKNOWN"
    message: str = ""
    replicas: dict[str, int] = field(default_factory=dict)
    target: int | None = None
    pids: list[dict[str, Any]] = field(default_factory=list)
    spec_hash: str | None = None


def _quiet_backpressure(record: logging.LogRecord) -> bool:
    return "dropped due to backpressure" not in record.getMessage()


def _error_class(name: str) -> type[ShipyardError]:
    import shipyard.errors as errors

    found = getattr(errors, name, None)
    return found if isinstance(found, type) and issubclass(found, ShipyardError) else (
        ServiceError)


class RayServing:
    """Ray Serve for the `engine: ray` services of one gateway process."""

    def __init__(self, config: RayConfig, *, python_path: list[str], metrics: Metrics) -> None:
        self.config = config
        self.python_path = list(python_path)
        self.metrics = metrics
        self.apps: dict[str, _App] = {}
        self.snapshots: dict[str, _Snapshot] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=50)
        self.runners: dict[str, RayRunner] = {}
        # The plans that serve now, by service (set by the gateway: its current targets, so a
        # reload that was refused never retires what still serves).
        self.plans: Callable[[], dict[str, Plan]] = self._runner_plans
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._serve: Any = None

    # -- connection ---------------------------------------------------------------------------
    def serve(self) -> Any:
        """`ray.serve`, connected, with Serve started without HTTP proxies (the gateway is
        the only way in)."""
        if self._serve is None:
            connect(self.config)
            from ray import serve

            # Shed requests are counted (shipyard_requests_shed) and answered 503; Ray's own
            # line per dropped request would flood the log under overload.
            logging.getLogger("ray.serve").addFilter(_quiet_backpressure)

            serve.start(proxy_location="Disabled")
            self._serve = serve
        return self._serve

    def runner(self, name: str, config: ServiceConfig) -> RayRunner:
        runner = RayRunner(self, name, config)
        self.runners[name] = runner
        return runner

    def app_name(self, service: str, label: str) -> str:
        tag = f"v{label}" if label.isdigit() else label
        return f"{self.config.app_prefix}-{_UNSAFE.sub('-', service)}-{tag}"

    # -- deploying ----------------------------------------------------------------------------
    def _options(self, placement: RayPlacement, spec: VersionSpec) -> dict[str, Any]:
        runtime_env = python_path_env({**self.config.runtime_env, **placement.runtime_env},
                                      self.python_path)
        actor: dict[str, Any] = {"num_cpus": placement.num_cpus,
                                 "num_gpus": placement.num_gpus}
        if runtime_env:
            actor["runtime_env"] = runtime_env
        if placement.memory_mb is not None:
            actor["memory"] = placement.memory_mb * 1024 * 1024
        options: dict[str, Any] = {
            "name": DEPLOYMENT, "ray_actor_options": actor,
            "max_ongoing_requests": placement.max_ongoing_requests,
            "max_queued_requests": placement.max_queued_requests,
            "graceful_shutdown_timeout_s": placement.graceful_shutdown_s,
            "health_check_period_s": placement.health_check_period_s}
        scaling = placement.autoscaling
        if scaling is not None:
            options["autoscaling_config"] = {
                "min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
                "initial_replicas": scaling.initial_replicas,
                "target_ongoing_requests": scaling.target_ongoing_requests,
                "upscale_delay_s": scaling.upscale_delay_s,
                "downscale_delay_s": scaling.downscale_delay_s,
                "metrics_interval_s": scaling.metrics_interval_s,
                "look_back_period_s": scaling.look_back_period_s}
        else:
            options["num_replicas"] = placement.replicas or 1
        identity = orjson.dumps({"spec": spec.identity(), "options": options},
                                option=orjson.OPT_SORT_KEYS, default=str)
        # Ray Serve versions Python deployments itself (a new code version on every deploy),
        # so the spec's hash rides along as user_config: a process that finds the same hash
        # running does not deploy again (no replica restarts when a gateway restarts).
        options["user_config"] = {"spec": hashlib.sha256(identity).hexdigest()[:16]}
        return options

    def deploy(self, service: str, placement: RayPlacement, version: LoadedVersion, *,
               timeout_s: float) -> _App:
        """Deploy `version` of `service` (a no-op when Ray already runs the same spec) and
        wait until it is healthy; blocking, for a worker thread. Raises ConfigError saying
        why when it cannot."""
        try:
            return self._deploy(service, placement, version, timeout_s=timeout_s)
        except ShipyardError:
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ConfigError(f"Ray Serve could not deploy version {version.label} of "
                              f"'{service}' ({type(exc).__name__}: {text}).") from None

    def _deploy(self, service: str, placement: RayPlacement, version: LoadedVersion, *,
                timeout_s: float) -> _App:
        name = self.app_name(service, version.label)
        spec = VersionSpec.of(service, version, timeout_s=timeout_s)
        options = self._options(placement, spec)
        spec_hash = str(options["user_config"]["spec"])
        with self._lock:
            known = self.apps.get(name)
            if known is not None and known.spec_hash == spec_hash and (
                    known.handle is not None):
                known.unused_since = None
                return known
        serve = self.serve()
        started = time.monotonic()
        running = _details(serve).get(name)
        if running is None or running.spec_hash != spec_hash or running.status != "RUNNING":
            app = serve.deployment(Replica).options(**options).bind(spec)
            log.info("ray: deploying %s (%s)", name, placement.scale)
            serve._run(app, name=name, route_prefix=None, _blocking=False)
            self._wait_healthy(name, started)
            self.events.append({"at": time.time(), "service": service,
                                "version": version.label, "event": "deployed",
                                "detail": placement.scale,
                                "seconds": round(time.monotonic() - started, 1)})
        handle = serve.get_deployment_handle(DEPLOYMENT, app_name=name)
        # One call before serving: the handle learns the replicas, so the first burst of
        # requests is spread over them instead of filling the queue of a handle that knows
        # none yet.
        handle.pid.remote().result(timeout_s=self.config.deploy_timeout_s)
        found = _App(name, service, version.label, spec_hash, handle)
        with self._lock:
            self.apps[name] = found
        # Read the status at once: `shipyard status` and the dashboard show the replicas of
        # a fresh deployment now, not after the next `status_interval_s` tick.
        try:
            self.poll(retire=False)
        except Exception as exc:  # the status loop will try again; serving goes on
            log.debug("ray: reading Serve status after deploying %s failed (%s)", name, exc)
        return found

    def _wait_healthy(self, name: str, started: float) -> None:
        serve = self._serve
        deadline = started + self.config.deploy_timeout_s
        while True:
            status = serve.status().applications.get(name)
            state = str(getattr(status, "status", "")) if status is not None else ""
            state = state.rsplit(".", 1)[-1]
            if state == "RUNNING":
                return
            if state in _FAILED:
                message = getattr(status, "message", "") or ""
                raise ConfigError(f"Ray Serve could not deploy '{name}' ({state}: "
                                  f"{message.strip()[:400]}).")
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"Ray Serve did not get '{name}' running within ray.deploy_timeout_s "
                    f"({self.config.deploy_timeout_s:g} s; last state {state or 'unknown'}); "
                    "check that the cluster has the CPUs/GPUs the service's ray settings ask "
                    "for (ray status).")
            time.sleep(0.25)

    def prepare(self, service: str, config: ServiceConfig, plan: Plan) -> None:
        for version in (plan.stable, plan.candidate):
            if version is not None:
                self.deploy(service, config.ray, version, timeout_s=config.timeout_s)

    async def handle(self, service: str, config: ServiceConfig, version: LoadedVersion) -> Any:
        """The deployment handle of `version` (deployed first when this process has not:
        a version swapped in elsewhere, or the configured version before the registry)."""
        app = self.apps.get(self.app_name(service, version.label))
        if app is not None and app.handle is not None:
            return app.handle
        found = await asyncio.to_thread(self.deploy, service, config.ray, version,
                                        timeout_s=config.timeout_s)
        return found.handle

    def forget(self, service: str, label: str) -> None:
        """A handle whose application is gone: deploy again on the next call."""
        with self._lock:
            self.apps.pop(self.app_name(service, label), None)

    # -- status -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.runners and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            try:
                await asyncio.to_thread(self.poll)
                self.last_error = None
            except Exception as exc:  # the cluster may be restarting; serving goes on
                text = f"{type(exc).__name__}: {str(exc)[:200]}"
                if self.last_error != text:
                    log.warning("ray: reading Serve status failed (%s)", text)
                self.last_error = text

    def poll(self, *, retire: bool = True) -> None:
        """Read every application's status once; update metrics, events, and (with `retire`)
        retire versions no plan serves."""
        if self._serve is None:
            return
        details = _details(self._serve)
        now = time.monotonic()
        wanted = self._wanted()
        for name, app in list(self.apps.items()):
            found = details.get(name)
            if found is None:
                continue
            old = self.snapshots.get(name)
            self.snapshots[name] = found
            self._report(app, old, found)
            if not retire:  # right after a deploy: the plan serving it may not be set yet
                continue
            if name in wanted:
                app.unused_since = None
            elif app.unused_since is None:
                app.unused_since = now
            elif now - app.unused_since >= self.config.retire_after_s:
                log.info("ray: deleting %s (no longer served)", name)
                self._serve.delete(name, _blocking=False)
                self.events.append({"at": time.time(), "service": app.service,
                                    "version": app.label, "event": "retired", "detail": ""})
                with self._lock:
                    self.apps.pop(name, None)
                self.snapshots.pop(name, None)
                for state in found.replicas:
                    self.metrics.ray_replicas.labels(app.service, app.label, state).set(0)

    def _runner_plans(self) -> dict[str, Plan]:
        return {name: runner.router.plan for name, runner in self.runners.items()
                if runner.router is not None}

    def _wanted(self) -> set[str]:
        names = set()
        for service, plan in self.plans().items():
            for version in (plan.stable, plan.candidate):
                if version is not None:
                    names.add(self.app_name(service, version.label))
        return names

    def _report(self, app: _App, old: _Snapshot | None, new: _Snapshot) -> None:
        for state in set(new.replicas) | set(old.replicas if old else {}):
            self.metrics.ray_replicas.labels(app.service, app.label, state).set(
                new.replicas.get(state, 0))
        if new.target is not None:
            self.metrics.ray_target_replicas.labels(app.service, app.label).set(new.target)
        before = old.target if old is not None else None
        if before is not None and new.target is not None and new.target != before:
            direction = "up" if new.target > before else "down"
            self.metrics.ray_scaling.labels(app.service, direction).inc()
            self.events.append({"at": time.time(), "service": app.service,
                                "version": app.label, "event": f"scale {direction}",
                                "detail": f"{before} → {new.target} replicas"})
            log.info("ray: %s scales %s from %d to %d replicas", app.name, direction, before,
                     new.target)
        unhealthy = new.deployment_status == "UNHEALTHY"
        if unhealthy and (old is None or old.deployment_status != "UNHEALTHY"):
            self.events.append({"at": time.time(), "service": app.service,
                                "version": app.label, "event": "unhealthy",
                                "detail": new.message[:200]})

    def problems(self) -> list[str]:
        """What keeps services on Ray from serving (for /readyz): the status read failing,
        versions that could not be deployed."""
        found = [f"reading Ray Serve's status failed: {self.last_error}"] if (
            self.last_error) else []
        for name, runner in sorted(self.runners.items()):
            router = runner.router
            if router is not None and router.load_error and router.load_error.startswith(
                    "versions of"):
                found.append(router.load_error)
            if runner.deploy_error is not None:
                found.append(f"service '{name}': {runner.deploy_error}")
        return found

    def status(self, service: str) -> dict[str, Any]:
        """What `shipyard status` and the dashboard show of one service on Ray."""
        runner = self.runners.get(service)
        versions = []
        for name, app in sorted(self.apps.items()):
            if app.service != service:
                continue
            snap = self.snapshots.get(name, _Snapshot())
            versions.append({"app": name, "version": app.label, "status": snap.status,
                             "deployment_status": snap.deployment_status,
                             "message": snap.message, "replicas": dict(snap.replicas),
                             "target_replicas": snap.target, "replica_processes": snap.pids,
                             "retiring": app.unused_since is not None})
        return {"engine": "ray", "address": self.config.address,
                "scale": runner.config.ray.scale if runner is not None else None,
                "max_ongoing_requests": runner.config.ray.max_ongoing_requests
                if runner is not None else None,
                "max_queued_requests": runner.config.ray.max_queued_requests
                if runner is not None else None,
                "versions": versions,
                "events": [e for e in self.events if e["service"] == service][-20:],
                "status_error": self.last_error}


def _details(serve: Any) -> dict[str, _Snapshot]:
    """Every application's state, replicas by state and the autoscaler's target (from the
    controller's details, which also name each replica's process)."""
    out: dict[str, _Snapshot] = {}
    client = serve.context._get_global_client()
    details = client.get_serve_details()
    for name, app in (details.get("applications") or {}).items():
        deployment = (app.get("deployments") or {}).get(DEPLOYMENT) or {}
        replicas: dict[str, int] = {}
        pids = []
        for replica in deployment.get("replicas") or []:
            state = str(replica.get("state", "UNKNOWN")).rsplit(".", 1)[-1]
            replicas[state] = replicas.get(state, 0) + 1
            pids.append({"replica": replica.get("replica_id"), "state": state,
                         "pid": replica.get("pid"), "node": replica.get("node_ip")})
        out[name] = _Snapshot(
            status=str(app.get("status", "UNKNOWN")).rsplit(".", 1)[-1],
            deployment_status=str(deployment.get("status", "UNKNOWN")).rsplit(".", 1)[-1],
            message=str(deployment.get("message") or app.get("message") or ""),
            replicas=replicas, target=deployment.get("target_num_replicas"), pids=pids,
            spec_hash=((deployment.get("deployment_config") or {}).get("user_config")
                       or {}).get("spec"))
    return out


class RayRunner:
    """Runs one service's versions on Ray: the service's terminal step calls it instead of
    the function."""

    def __init__(self, serving: RayServing, name: str, config: ServiceConfig) -> None:
        self.serving = serving
        self.name = name
        self.config = config
        self.router: VersionRouter | None = None
        self.deploy_error: str | None = None  # the last on-demand deployment that failed

    def attach(self, router: VersionRouter) -> None:
        """Deploy every plan the lifecycle controller is about to swap in first."""
        self.router = router
        router.prepare = lambda plan: self.serving.prepare(self.name, self.config, plan)

    async def __call__(self, version: LoadedVersion, argument: Any) -> Any:
        placement = self.config.ray
        what = f"Service '{self.name}'"
        called = invocation.get()
        ray = import_ray()
        from ray.serve.exceptions import BackPressureError

        attempts = placement.retries + 1
        attempt = 0
        while True:
            attempt += 1
            try:
                handle = await self.serving.handle(self.name, self.config, version)
            except ShipyardError as exc:
                # Not deployable now (the cluster is unreachable, too few CPUs): retryable.
                self.deploy_error = exc.message
                raise CapacityError(
                    f"{what} cannot be deployed on Ray now ({exc.message}); retry after "
                    f"{placement.retry_after_s} s.",
                    headers={"retry-after": str(placement.retry_after_s)}) from None
            self.deploy_error = None
            response = handle.remote(argument, called)
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    result = await response
            except TimeoutError:
                response.cancel()
                raise UpstreamTimeout(f"{what} did not return within "
                                      f"{self.config.timeout_s:g}s (on Ray).") from None
            except BackPressureError:
                self.serving.metrics.shed.labels(f"{self.name}:ray").inc()
                retry = placement.retry_after_s
                raise CapacityError(
                    f"{what} is at capacity on Ray (every replica is working on "
                    f"{placement.max_ongoing_requests} requests and "
                    f"{placement.max_queued_requests} are queued); retry after {retry} s.",
                    headers={"retry-after": str(retry)}) from None
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                # The replica died (or is unreachable) with this call on it: another replica
                # answers, unless the function must not run twice (retries: 0).
                if attempt < attempts:
                    self.serving.metrics.ray_replica_failures.labels(self.name,
                                                                     "retried").inc()
                    log.warning("ray: a replica of %s failed during a call (%s); sending it "
                                "again", self.name, type(exc).__name__)
                    await asyncio.sleep(0.05 * attempt)
                    continue
                self.serving.metrics.ray_replica_failures.labels(self.name, "failed").inc()
                raise CapacityError(
                    f"{what} lost its Ray replica during the call {attempts} time(s); retry "
                    f"after {placement.retry_after_s} s.",
                    code="replica_unavailable",
                    headers={"retry-after": str(placement.retry_after_s)}) from None
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                raise ServiceError(f"{what} failed on Ray: {type(cause).__name__}: "
                                   f"{str(cause).splitlines()[0][:300] if str(cause) else ''}"
                                   ) from None
            except ShipyardError:
                raise
            except ray.exceptions.RayError as exc:
                if "not found" in str(exc).lower() or "deleted" in str(exc).lower():
                    self.serving.forget(self.name, version.label)
                raise CapacityError(
                    f"{what} cannot be reached on Ray ({type(exc).__name__}); retry after "
                    f"{placement.retry_after_s} s.",
                    headers={"retry-after": str(placement.retry_after_s)}) from None
            if isinstance(result, Failure):
                raise _error_class(result.error)(result.message, code=result.code)
            return result
