"""What a readiness check says: findings (pass, warn, fail, skip) with a fix and evidence,
grouped into the five challenges, each with a score; and the gate a CI job applies to them.

A section's score is the weighted share of its decided findings that passed (a warning counts
half): `100 * (pass + warn / 2) / (pass + warn + fail)`, weights applied. Skipped findings
(something could not be measured) count for nothing but are listed. The overall score is the
mean of the sections that have at least one decided finding.

>>> s = Section("data", "Data")
>>> s.add(Finding("quarantine", "pass", "0.5% of rows quarantined"))
>>> s.add(Finding("pii", "warn", "PII found", fix="turn on redaction"))
>>> s.score
75.0
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from shipyard.errors import ConfigError

__all__ = ["SECTIONS", "STATUSES", "Finding", "Gate", "Section", "parse_gate", "status_of"]

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip")

# The five seed challenges, in report order: (key, title, what it covers).
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("data", "Data", "the datasets' audit: quarantine, duplicates, PII, bias; PII detector "
     "accuracy"),
    ("security", "Integration & security", "config lint, auth probes, webhook signing, the "
     "audit chain"),
    ("scale", "Scale & reliability", "maximum rate at the SLO, capacity plan, cost, chaos"),
    ("trust", "Trust", "red team detection and false positives, graceful answers, escalation"),
    ("lifecycle", "Monitoring & lifecycle", "alerts, SLOs, drift, retention, versions and "
     "rollback, evals"),
)
_VALUE = {"pass": 1.0, "warn": 0.5, "fail": 0.0}


@dataclass
class Finding:
    """One check: its `status`, what was seen (`summary`), how to fix it (`fix`, empty when
    it passed) and the numbers behind it (`evidence`; `link` names a sub-report file)."""

    id: str
    status: Status
    summary: str
    fix: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    link: str = ""
    weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _clean(asdict(self))
        return data


@dataclass
class Section:
    """One challenge: its findings, score, sub-reports and plots (plotly figure dicts)."""

    key: str
    title: str
    findings: list[Finding] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)  # name -> file beside the report
    seconds: float = 0.0

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    @property
    def score(self) -> float | None:
        decided = [f for f in self.findings if f.status != "skip"]
        total = sum(f.weight for f in decided)
        if not total:
            return None
        return round(100.0 * sum(_VALUE[f.status] * f.weight for f in decided) / total, 1)

    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.findings) for s in STATUSES}

    @property
    def status(self) -> Status:
        return status_of([f.status for f in self.findings])

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "score": self.score,
                "status": self.status, "counts": self.counts(),
                "seconds": round(self.seconds, 2), "reports": dict(self.reports),
                "findings": [f.to_dict() for f in self.findings]}


def status_of(statuses: list[Status]) -> Status:
    """The worst decided status (fail > warn > pass); `skip` when nothing was decided."""
    for worst in ("fail", "warn", "pass"):
        if worst in statuses:
            return worst
    return "skip"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# -- the gate ---------------------------------------------------------------------------------
_GATE = re.compile(r"^\s*([a-z_-]+)\s*(>=|=)?\s*(\d+(?:\.\d+)?)?\s*$")
_GATE_HELP = ("write overall=70, a section's minimum score (data=60, security=80, scale=70, "
              "trust=70, lifecycle=50) or no-fail (no finding may fail)")


@dataclass(frozen=True)
class Gate:
    """Minimum scores (`overall` and per section) and whether any failed finding fails CI."""

    minimums: dict[str, float] = field(default_factory=dict)
    no_fail: bool = False

    def violations(self, overall: float | None, sections: list[Section]) -> list[str]:
        """Why the run misses the gate (empty when it meets it)."""
        out = []
        scores: dict[str, float | None] = {s.key: s.score for s in sections}
        scores["overall"] = overall
        for name, minimum in self.minimums.items():
            value = scores.get(name)
            if value is None:
                out.append(f"{name}: no score (nothing was measured) < {minimum:g}")
            elif value < minimum:
                out.append(f"{name}: score {value:g} < {minimum:g}")
        if self.no_fail:
            failed = [f"{s.key}/{f.id}" for s in sections for f in s.findings
                      if f.status == "fail"]
            if failed:
                out.append(f"no-fail: {len(failed)} finding(s) failed ({', '.join(failed)})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"minimums": dict(self.minimums), "no_fail": self.no_fail}


def parse_gate(specs: list[str]) -> Gate:
    """`["overall=70", "security=80", "no-fail"]` (comma-separated items allowed) -> Gate."""
    keys = {"overall"} | {k for k, _, _ in SECTIONS}
    minimums: dict[str, float] = {}
    no_fail = False
    for spec in specs:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            match = _GATE.match(item)
            if match is None:
                raise ConfigError(f"--gate is '{item}'; {_GATE_HELP}.", param="gate")
            name, number = match[1], match[3]
            if name == "no-fail" and number is None:
                no_fail = True
                continue
            if name not in keys or number is None:
                raise ConfigError(f"--gate is '{item}'; {_GATE_HELP}.", param="gate")
            value = float(number)
            if value > 100:
                raise ConfigError(f"--gate '{item}' asks for {value:g}; scores go from 0 to "
                                  "100.", param="gate")
            minimums[name] = value
    return Gate(minimums, no_fail)
