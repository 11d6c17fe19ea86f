"""`shipyard check`: the readiness verdict — the five challenges scored from the existing
engines (data audit, config lint and auth probes, load, chaos, red team, alerts, versions).

Modules: findings (findings, sections, scores, the gate), lint (config rules), probes (live
auth, isolation, graceful-answer and escalation probes with temporary tenants), runbooks
(one per alert rule and SLO), run (the orchestrator), report (JSON and self-contained HTML).
"""

from __future__ import annotations

from shipyard.readiness.check.findings import SECTIONS, Finding, Gate, Section, parse_gate
from shipyard.readiness.check.run import CheckOptions, CheckReport, run_check

__all__ = ["SECTIONS", "CheckOptions", "CheckReport", "Finding", "Gate", "Section",
           "parse_gate", "run_check"]
