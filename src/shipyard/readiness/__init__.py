"""Proof before go-live: load tests (and, later, chaos, red-team and a scored report)."""

from __future__ import annotations

from shipyard.readiness.loadtest import (
    SLO,
    LoadResult,
    Probe,
    Profile,
    Progress,
    SearchResult,
    Target,
    check_target,
    find_max_rate,
    parse_profile,
    run_load,
)

__all__ = [
    "SLO",
    "LoadResult",
    "Probe",
    "Profile",
    "Progress",
    "SearchResult",
    "Target",
    "check_target",
    "find_max_rate",
    "parse_profile",
    "run_load",
]
