"""The request pipeline every target shares: the request context, `Call`, `Reply`, `Stage`
and their composition around a target's terminal step.

It sits below the domains: security, privacy, guards, resilience and escalation contribute
stages; `shipyard.targets` assembles one chain per model alias or service; the gateway maps
HTTP to calls. Nothing here imports a domain package or the gateway.
"""

from __future__ import annotations

from shipyard.pipeline.call import Call, Endpoint, Handler, Reply, Stage, Target, compose
from shipyard.pipeline.context import Invocation, RequestContext, invocation

__all__ = [
    "Call",
    "Endpoint",
    "Handler",
    "Invocation",
    "Reply",
    "RequestContext",
    "Stage",
    "Target",
    "compose",
    "invocation",
]
