"""The `drift:` section: scheduled data drift checks over gateway traces (docs/drift.md).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator

from shipyard.config.base import Section

__all__ = [
    "DriftCheckConfig",
    "DriftConfig",
]


class DriftCheckConfig(Section):
    """One scheduled drift check over gateway traces (see docs/drift.md)."""

    service: str | None = Field(
        None, description="Only traces of this service or model alias (default: all traffic).")
    tenant: str | None = Field(None, description="Only traces of this tenant (default: all).")
    columns: list[str] = Field(
        min_length=1,
        default_factory=lambda: ["prompt_length", "language", "output_length", "refusal",
                                 "finish_reason", "status", "latency_ms", "prompt_tokens",
                                 "completion_tokens"],
        description="Feature columns to test: built-in trace features and `input.FIELD` for "
        "a python service's declared inputs (see docs/drift.md).")
    current_window_s: float = Field(
        86_400.0, gt=0, description="The current window: the last this many seconds.")
    reference_window_s: float = Field(
        7 * 86_400.0, gt=0,
        description="Length of the rolling reference window, which ends where the current "
        "window starts. Ignored when `reference_start` is set.")
    reference_refresh_s: float = Field(
        86_400.0, ge=0,
        description="A rolling reference profile is rebuilt only when older than this (0: on "
        "every run); in between, runs reuse the stored profile instead of rereading traces.")
    reference_start: datetime | None = Field(
        None, description="Fixed reference window start (ISO time); profiled once and kept.")
    reference_end: datetime | None = Field(
        None, description="Fixed reference window end (default: reference_start plus "
        "reference_window_s).")
    method: dict[str, str] = Field(
        default_factory=dict,
        description="Test per column instead of the Evidently default, e.g. {latency_ms: psi} "
        "(ks, wasserstein, chisquare, z, jensenshannon, psi).")
    threshold: dict[str, float] = Field(
        default_factory=dict, description="Threshold per column instead of the test's default.")
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Dataset drift when at least this share of columns drift.")
    min_rows: int = Field(
        30, ge=1, description="Skip a run (and record nothing) when a window has fewer traces.")
    max_rows: int = Field(
        1_000_000, ge=100, description="Most traces read per window (the newest).")

    @field_validator("method")
    @classmethod
    def _known_methods(cls, value: dict[str, str]) -> dict[str, str]:
        known = ("ks", "wasserstein", "chisquare", "z", "jensenshannon", "psi")
        for column, method in value.items():
            if method not in known:
                raise ValueError(f"method for column '{column}' is '{method}'; use one of "
                                 f"{', '.join(known)}")
        return value


class DriftConfig(Section):
    enabled: bool = Field(True, description="Run the checks below on a schedule while serving.")
    interval_s: float = Field(
        3600.0, ge=10, description="Seconds between two runs of every drift check.")
    checks: dict[str, DriftCheckConfig] = Field(
        default_factory=dict, description="Scheduled drift checks, by name.")
