"""Generated runbooks: for each configured alert rule and SLO, what it means and what to do.

A rule's own `runbook:` text (or URL) comes first; the generated steps follow from its metric
(or SLI), so an on-call engineer gets a starting point even when nobody wrote one.

>>> runbooks(config)[0]["steps"][0]  # doctest: +SKIP
'Open /ui/traces?status=5xx ...'
"""

from __future__ import annotations

from typing import Any

from shipyard.config import Config
from shipyard.config.alerting import METRICS

__all__ = ["runbooks"]

_STEPS: dict[str, list[str]] = {
    "error_rate": [
        "Open the dashboard's traces filtered to errors (/ui/traces?status=error) and group "
        "by error type and upstream: one provider, one model or everything?",
        "Check `shipyard status`: an open circuit names the failing deployment; its "
        "provider's status page tells whether it is theirs.",
        "If one deployment fails, take it out of rotation (weight 0 or remove it) and "
        "`shipyard reload`; the fallbacks carry the traffic.",
        "If a release preceded it, roll back: `shipyard versions rollback SERVICE`.",
    ],
    "client_error_rate": [
        "Group recent 4xx traces by status and error code: 401/403 point at keys (a rotated "
        "or revoked key still in use), 400/422 at a client sending bad requests, 429 at "
        "limits.",
        "Find the key or tenant behind them (`shipyard traces list --status 4xx`) and talk "
        "to its owner; raise limits only when the traffic is legitimate.",
    ],
    "latency": [
        "Compare upstream_ms with overhead_ms and queue_ms on slow traces: upstream slow, or "
        "the gateway queueing (admission)?",
        "Upstream slow: check the provider, shift weight to a faster deployment, lower "
        "max_tokens; queueing: add replicas (`shipyard check` gives the capacity plan).",
    ],
    "cost_per_hour": [
        "Find the tenants and keys spending most (`shipyard usage --since 1h`).",
        "A runaway client: revoke or limit its key (`shipyard keys revoke`); expected "
        "growth: raise budgets deliberately.",
    ],
    "request_rate": [
        "A surge: check whether it is one key (a loop in a client) or broad growth.",
        "One key: limit it (rate_limits) or revoke it; growth: scale out by the capacity "
        "plan of `shipyard check`.",
    ],
    "shed_requests": [
        "The gateway is refusing work for capacity: add replicas or raise "
        "server.max_in_flight only if the upstream can take it.",
        "Check that one tenant is not crowding out the others (per-tenant rate limits).",
    ],
    "cache_hit_rate": [
        "A drop in hits: a prompt or model change invalidated the cache, or the cache backend "
        "(Redis) is unreachable; check `shipyard status`.",
    ],
}
_ALIASES = {"latency_p50_ms": "latency", "latency_p95_ms": "latency", "latency_p99_ms": "latency",
            "ttft_p95_ms": "latency", "requests": "request_rate", "tokens": "cost_per_hour",
            "tokens_per_minute": "cost_per_hour"}
_GENERIC = ["Open the alert on the dashboard (/ui/alerts) and the traces of its window.",
            "Find what changed just before: a release, a config reload, a provider incident."]


def _scope(item: Any) -> str:
    parts = [f"{k} {getattr(item, k)}" for k in ("model", "service", "tenant")
             if getattr(item, k, None)]
    return ", ".join(parts) or "all traffic"


def runbooks(config: Config) -> list[dict[str, Any]]:
    """One runbook per alert rule and SLO: name, severity, meaning, steps, the rule's own
    runbook text, and the channels it notifies."""
    out: list[dict[str, Any]] = []
    for rule in config.alerts.rules:
        metric = rule.metric or "query"
        what = METRICS.get(metric, f"the query {rule.query!r}")
        meaning = (f"{what} over {rule.window:g} s on {_scope(rule)} was {rule.comparison} "
                   f"{rule.threshold:g} for {rule.for_duration:g} s"
                   + (f" (at least {rule.min_requests} requests)" if rule.min_requests > 1
                      else ""))
        steps = _STEPS.get(_ALIASES.get(metric, metric), _GENERIC)
        out.append({"name": rule.name, "kind": "rule", "severity": rule.severity,
                    "summary": rule.summary, "meaning": meaning, "steps": list(steps),
                    "own": rule.runbook, "channels": rule.channels or []})
    for slo in config.slos:
        sli = ("requests answered without a 5xx" if slo.sli == "availability" else
               f"requests answered within {slo.latency_threshold_ms or 0:g} ms")
        meaning = (f"the error budget of {slo.objective:.3%} {sli} on {_scope(slo)} over "
                   f"{slo.period / 86400:g} days is burning faster than it can last: at this "
                   "rate it runs out before the period ends")
        steps = (["A page-severity burn (fast) means users are failing now: treat it like an "
                  "outage."]
                 + _STEPS["error_rate" if slo.sli == "availability" else "latency"]
                 + ["After it is fixed, look at what is left of the budget (/ui/alerts) before "
                    "the next risky release."])
        out.append({"name": slo.name, "kind": "slo", "severity": "page/ticket (burn rate)",
                    "summary": f"{slo.sli} SLO {slo.objective:.3%}", "meaning": meaning,
                    "steps": steps, "own": slo.runbook, "channels": slo.channels or []})
    return out
