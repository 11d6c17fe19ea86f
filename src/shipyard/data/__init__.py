"""Data pipeline: ingest messy data at volume, validate, quarantine, clean, de-duplicate, protect
PII, report bias, and write versioned Parquet datasets. Every input row is accounted for.

>>> from shipyard.data import load_pipeline, run_pipeline
>>> report = run_pipeline(load_pipeline("pipeline.yaml"))  # doctest: +SKIP
>>> report.rows_in == report.rows_out + report.rows_quarantined + report.duplicates_removed
... # doctest: +SKIP
True

Needs the `data` extra: `pip install 'shipyard[data]'`.
"""

from __future__ import annotations

from shipyard.data.config import PipelineConfig, load_pipeline, parse_pipeline
from shipyard.data.diff import diff_versions, export_version
from shipyard.data.pipeline import AccountingError, RunReport, run_pipeline
from shipyard.data.registry import DatasetRegistry

__all__ = [
    "AccountingError",
    "DatasetRegistry",
    "PipelineConfig",
    "RunReport",
    "diff_versions",
    "export_version",
    "load_pipeline",
    "parse_pipeline",
    "run_pipeline",
]
