"""Prometheus metrics of one gateway (prometheus-client, a registry per app).

Each app gets its own `CollectorRegistry`, so several apps (and tests) never share counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from shipyard.config import env

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)
# Guards: a regex guard takes well under a millisecond, a model-backed one tens of ms, and
# the longest sensible timeout is a second or two.
_GUARD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
)


class Metrics:
    """Every metric the gateway exposes at `/metrics`.

    With several worker processes (`shipyard serve --workers N` sets PROMETHEUS_MULTIPROC_DIR
    for them), counters, histograms and gauges live in shared files and every scrape, whichever
    worker answers it, reports the sum over all workers; state that only one process knows (its
    trace queue, its spool, its admission queues) is reported by the worker that answers.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call] # the *_created series only add noise to every scrape
        self.multiprocess_dir = env.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # Collectors computed at scrape time from this process's own state.
        self.local_registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "shipyard_requests", "Requests answered, by route, service, model and status.",
            ("route", "service", "model", "status"), registry=r)
        self.latency = Histogram(
            "shipyard_request_duration_seconds",
            "Time from request to the end of the response, by route, service, model, status.",
            ("route", "service", "model", "status"), buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_latency = Histogram(
            "shipyard_upstream_duration_seconds", "Time spent waiting on the upstream.",
            ("provider",), buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "shipyard_time_to_first_token_seconds", "Time to the first streamed token.",
            ("service", "model"), buckets=_LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram(
            "shipyard_overhead_seconds", "Time spent in Shipyard itself, upstream excluded.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1), registry=r)
        self.tokens = Counter(
            "shipyard_tokens", "Tokens processed, by service, model and kind (prompt/completion).",
            ("service", "model", "kind"), registry=r)
        self.cost = Counter(
            "shipyard_cost_usd", "Spend in USD (price table x tokens), by service and model.",
            ("service", "model"), registry=r)
        self.budget_alerts = Counter(
            "shipyard_budget_alerts", "Budgets that crossed their soft threshold, by scope.",
            ("scope",), registry=r)
        self.traces_written = Counter(
            "shipyard_traces_written", "Traces written to the store.", registry=r)
        self.trace_drops = Counter(
            "shipyard_trace_queue_dropped",
            "Traces that could not be queued because the trace queue was full.", registry=r)
        self.trace_queue_depth = Gauge(
            "shipyard_trace_queue_depth", "Traces waiting to be written.",
            registry=self.local_registry)
        self.circuit_state = Gauge(
            "shipyard_circuit_state",
            "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.",
            ("deployment",), registry=r, multiprocess_mode="max")
        self.circuit_transitions = Counter(
            "shipyard_circuit_transitions", "Circuit breaker state changes, by new state.",
            ("deployment", "state"), registry=r)
        self.attempts = Counter(
            "shipyard_upstream_attempts",
            "Upstream attempts, by alias, deployment and outcome (ok or the error class).",
            ("model", "deployment", "outcome"), registry=r)
        self.retries = Counter(
            "shipyard_retries", "Attempts beyond the first, by alias.", ("model",), registry=r)
        self.fallbacks = Counter(
            "shipyard_fallbacks", "Requests served by a fallback alias, by requested and serving "
            "alias.", ("model", "served_by"), registry=r)
        self.retry_budget_spent = Counter(
            "shipyard_retry_budget_exhausted",
            "Retries not made because the retry budget was spent.", ("model",), registry=r)
        self.shed = Counter(
            "shipyard_requests_shed", "Requests refused with 503 by admission control or drain, "
            "by scope (global, a model alias or service, drain).", ("scope",), registry=r)
        self.outcomes = Counter(
            "shipyard_request_outcomes", "Requests that did not end in a plain answer, by model "
            "or service and outcome (cached, fixed, blocked, escalated, shed, limited, error).",
            ("service", "outcome"), registry=r)
        self.payloads_skipped = Counter(
            "shipyard_payloads_unsampled", "Requests whose bodies were not captured because of "
            "traces.sample_payloads (their trace is still recorded).", registry=r)
        self.spans_export_failed = Counter(
            "shipyard_spans_export_failed", "Spans the OTLP collector did not accept.",
            registry=r)
        self.purged = Counter(
            "shipyard_traces_purged", "Rows removed by the retention policy, by kind (traces: "
            "deleted with their spans; payloads: bodies cleared).", ("kind",), registry=r)
        self.cache = Counter(
            "shipyard_cache_requests", "Cache lookups by alias and outcome (hit/miss/bypass).",
            ("model", "outcome"), registry=r)
        self.pii_findings = Counter(
            "shipyard_pii_findings", "Personal data found, by alias or service, entity type and "
            "where (request or response).", ("service", "entity", "where"), registry=r)
        self.escalations = Counter(
            "shipyard_escalations", "Conversations handed to a person, by alias or service and "
            "trigger.", ("service", "trigger"), registry=r)
        self.escalation_webhooks = Counter(
            "shipyard_escalation_webhooks", "Escalation webhook deliveries, by event and outcome "
            "(delivered, failed).", ("event", "outcome"), registry=r)
        self.webhook_deliveries = Counter(
            "shipyard_webhook_deliveries", "Webhook delivery attempts by endpoint and outcome "
            "(delivered, retry, dead, cancelled).", ("endpoint", "outcome"), registry=r)
        self.guard_trips = Counter(
            "shipyard_guard_trips",
            "Guard verdicts other than allow (fix, block, escalate) and guard failures "
            "(timeout, error), by model or service, stage, guard and action.",
            ("target", "stage", "guard", "action"), registry=r)
        self.guard_duration = Histogram(
            "shipyard_guard_duration_seconds",
            "Time each guard took to judge (failed and timed-out runs included), by model or "
            "service, stage and guard.",
            ("target", "stage", "guard"), buckets=_GUARD_BUCKETS, registry=r)
        self.alert_evaluations = Counter(
            "shipyard_alert_evaluations", "Rounds in which this gateway (holding the evaluator "
            "lease) evaluated the alert rules and SLOs.", registry=r)
        self.auth_failures = Counter(
            "shipyard_auth_failures", "Requests that failed authentication or authorization, "
            "by reason (invalid_key, unknown_key, invalid_token, revoked, expired, missing, "
            "malformed, locked_out, scope, store_unavailable) and route (its path template).",
            ("reason", "route"), registry=r)
        self.auth_lockouts = Counter(
            "shipyard_auth_lockouts", "Client addresses or key ids locked out after too many "
            "failed authentications, by kind (address, key).", ("kind",), registry=r)
        self.version_requests = Counter(
            "shipyard_version_requests", "Requests answered by each version of a service "
            "(shadow copies included, route shadow), by service, version, route and outcome.",
            ("service", "version", "route", "outcome"), registry=r)
        self.shadow = Counter(
            "shipyard_shadow_copies", "Shadow copies sent to a candidate, by service and result "
            "(agree, differ, or the error).", ("service", "result"), registry=r)
        self.rollout_decisions = Counter(
            "shipyard_rollout_decisions", "Rollout controller decisions (step, promote, "
            "rollback, shadow_to_canary), by service.", ("service", "action"), registry=r)
        # Services on Ray Serve (shipyard.engines.ray): replicas by state as Ray reports them,
        # the autoscaler's target, its decisions, and calls re-sent after a replica died.
        self.ray_replicas = Gauge(
            "shipyard_ray_replicas", "Ray Serve replicas of a service version, by state "
            "(RUNNING, STARTING, UPDATING, RECOVERING, STOPPING, ...), read every "
            "ray.status_interval_s.", ("service", "version", "state"), registry=r,
            multiprocess_mode="max")
        self.ray_target_replicas = Gauge(
            "shipyard_ray_target_replicas", "Replicas Ray Serve is scaling a service version "
            "to (the autoscaler's decision).", ("service", "version"), registry=r,
            multiprocess_mode="max")
        self.ray_scaling = Counter(
            "shipyard_ray_scaling_decisions", "Autoscaling decisions seen on Ray Serve, by "
            "service and direction (up, down).", ("service", "direction"), registry=r)
        self.ray_replica_failures = Counter(
            "shipyard_ray_replica_failures", "Calls whose Ray replica died or became "
            "unreachable while working on them, by service and what followed (retried, "
            "failed).", ("service", "outcome"), registry=r)
        self.connector_messages = Counter(
            "shipyard_connector_messages", "Messages, rows and files connectors handled, by "
            "connector and outcome (ok; dead: dead-lettered; retried: a passing failure tried "
            "again).",
            ("connector", "outcome"), registry=r)
        self.connector_runs = Counter(
            "shipyard_connector_runs", "Connector runs that ended, by connector and status "
            "(succeeded, failed, interrupted).", ("connector", "status"), registry=r)
        self.connector_in_flight = Gauge(
            "shipyard_connector_in_flight", "Messages or rows a connector is working on now.",
            ("connector",), registry=r, multiprocess_mode="livesum")
        self.connector_up = Gauge(
            "shipyard_connector_up", "1 while a connector is connected to its broker, "
            "database or folder and running, 0 otherwise.", ("connector",), registry=r,
            multiprocess_mode="livemax")
        self._series: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        self._children: dict[tuple[object, ...], Any] = {}
        self.in_flight = Gauge(
            "shipyard_requests_in_flight", "Requests being processed now.", registry=r,
            multiprocess_mode="livesum")
        self.state_up = Gauge(
            "shipyard_state_up", "1 while the shared state (Redis) answers, 0 during an "
            "outage (the worst worker counts).", registry=r, multiprocess_mode="min")
        self.jobs_finished = Counter(
            "shipyard_jobs_finished", "Jobs that ended, by target and final status "
            "(succeeded, dead, cancelled).", ("target", "status"), registry=r)
        self.state_outage_answers = Counter(
            "shipyard_state_outage", "Operations that met a Redis outage, by feature and what "
            "the feature did (local: fell back to this process; closed: answered 503).",
            ("feature", "policy"), registry=r)

    def count_guard_trip(self, target: str, stage: str, guard: str, action: str) -> None:
        """A guard tripped (or failed); the guard runner calls this."""
        self.guard_trips.labels(target, stage, guard, action).inc()

    def guard_timer(self, target: str, stage: str, guard: str) -> Callable[[float], None]:
        """Where the runs of one guard are timed (seconds); the guard runner asks once per
        guard when it is built, so a run costs no label lookup."""
        return self.guard_duration.labels(target, stage, guard).observe

    def request_series(self, route: str, service: str, model: str,
                       status: int) -> tuple[Counter, Histogram]:
        """The request counter and latency histogram children for these labels (cached:
        `labels()` takes a lock and builds a key on every call)."""
        key = (route, service, model, status)
        series = self._series.get(key)
        if series is None:
            labels = (route, service, model, str(status))
            series = (self.requests.labels(*labels), self.latency.labels(*labels))
            if len(self._series) < 10_000:  # bounded: labels come from config, not clients
                self._series[key] = series
        return series

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached for the labels the request path uses on every
        request (provider, model, service: they come from config, not from clients)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            if len(self._children) < 10_000:
                self._children[key] = found
        return found

    def count_webhook(self, endpoint: str, event_type: str, outcome: str) -> None:
        """One webhook delivery attempt's outcome (escalation events are also counted under
        their older name)."""
        self.webhook_deliveries.labels(endpoint, outcome).inc()
        if endpoint.endswith(".escalation") and outcome in ("delivered", "dead"):
            self.escalation_webhooks.labels(
                event_type, "delivered" if outcome == "delivered" else "failed").inc()

    def count_purge(self, traces: int, payloads: int) -> None:
        if traces:
            self.purged.labels("traces").inc(traces)
        if payloads:
            self.purged.labels("payloads").inc(payloads)

    def watch_admission(self, depths: Callable[[], dict[str, int]]) -> None:
        """Report admission queue depths at scrape time."""
        class _Depths:
            def collect(self) -> Iterator[Metric]:
                family = GaugeMetricFamily(
                    "shipyard_admission_queue_depth", "Requests waiting for an admission slot.",
                    labels=("scope",))
                for scope, depth in depths().items():
                    family.add_metric((scope,), float(depth))
                yield family

        self.local_registry.register(_Depths())

    def count_job(self, target: str, status: str) -> None:
        self.jobs_finished.labels(target, status).inc()

    def watch_jobs(self, jobs: Callable[[], dict[tuple[str, str], int]],
                   batches: Callable[[], dict[str, int]]) -> None:
        """Jobs and batches in the store by status, from the last periodic count (a scrape
        never queries the store)."""

        class _Jobs:
            def collect(self) -> Iterator[Metric]:
                family = GaugeMetricFamily(
                    "shipyard_jobs", "Jobs in the store by target and status (queued, running, "
                    "succeeded, dead, cancelled), counted every few seconds.",
                    labels=("target", "status"))
                for (target, status), n in sorted(jobs().items()):
                    family.add_metric((target, status), float(n))
                yield family
                family = GaugeMetricFamily(
                    "shipyard_batches", "Batches in the store by status (validating, "
                    "in_progress, completed, failed, expired, cancelling, cancelled).",
                    labels=("status",))
                for status, n in sorted(batches().items()):
                    family.add_metric((status,), float(n))
                yield family

        self.local_registry.register(_Jobs())

    def watch_spool(self, status: Callable[[], dict[str, int]]) -> None:
        """Spool counters, read from the trace writer at scrape time."""

        class _Spool:
            def collect(self) -> Iterator[Metric]:
                values = status()
                for name, key, help_text in (
                    ("shipyard_traces_spooled", "spooled", "Traces written to the disk spool."),
                    ("shipyard_traces_replayed", "replayed", "Spooled traces replayed."),
                    ("shipyard_traces_spool_lost", "spool_lost",
                     "Traces lost because the spool was full."),
                ):
                    family = CounterMetricFamily(name, help_text)
                    family.add_metric((), float(values[key]))
                    yield family
                gauge = GaugeMetricFamily("shipyard_trace_spool_bytes",
                                          "Bytes of traces waiting in the disk spool.")
                gauge.add_metric((), float(values["spool_bytes"]))
                yield gauge

        self.local_registry.register(_Spool())

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.trace_queue_depth.set_function(lambda: float(depth()))

    def exposition(self) -> bytes:
        if self.multiprocess_dir:
            shared = CollectorRegistry()
            MultiProcessCollector(shared, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(shared) + generate_latest(self.local_registry)
        return generate_latest(self.registry) + generate_latest(self.local_registry)
