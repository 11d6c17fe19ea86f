"""The `jobs:` and `batches:` sections: asynchronous invocations of any target (durable jobs)
and the OpenAI-compatible Batch and Files APIs.

>>> JobsConfig.model_validate({"targets": {"score": {"concurrency": 2}}}).for_target(
...     "score").concurrency
2
"""

from __future__ import annotations

from pydantic import Field, field_validator

from shipyard.config.base import NAME_PATTERN, Section

__all__ = ["BatchesConfig", "JobTargetConfig", "JobsConfig"]


class JobTargetConfig(Section):
    """Job settings of one model alias or service (unset values use the `jobs:` defaults)."""

    concurrency: int | None = Field(
        None, ge=1, le=1024, description="Jobs of this target running at once per gateway "
        "process (default: `jobs.concurrency`).")
    max_attempts: int | None = Field(
        None, ge=1, le=100, description="Attempts before a job is dead-lettered (default: "
        "`jobs.max_attempts`).")
    timeout_s: float | None = Field(
        None, gt=0, le=86_400, description="Longest one attempt may take (default: "
        "`jobs.timeout_s`).")


class JobsConfig(Section):
    """Durable jobs: `POST /v1/services/NAME/jobs`, `/v1/models/ALIAS/jobs` and `/v1/jobs`."""

    enabled: bool = Field(
        True, description="Run queued jobs and batches in this process. Off: this process "
        "only accepts and reports them (another gateway runs them).")
    concurrency: int = Field(
        4, ge=1, le=1024, description="Jobs of one target running at once per gateway "
        "process (each target has its own limit, so a slow one does not hold up others).")
    max_attempts: int = Field(
        3, ge=1, le=100, description="Attempts before a job is dead-lettered with its last "
        "error; an attempt is retried after a 408, 409 (busy), 429 or 5xx answer, a timeout "
        "or a crash of the gateway that ran it, never after another 4xx.")
    timeout_s: float = Field(
        600.0, gt=0, le=86_400, description="Longest one attempt may take; a job's own "
        "`timeout_s` may be shorter.")
    backoff_base_s: float = Field(
        1.0, ge=0, le=3600, description="Retry delay cap after the first failed attempt; it "
        "doubles per attempt and the delay is drawn uniformly below it (full jitter). A "
        "`Retry-After` answer wins.")
    backoff_max_s: float = Field(300.0, ge=0, le=86_400,
                                 description="Largest retry delay between two attempts.")
    targets: dict[str, JobTargetConfig] = Field(
        default_factory=dict, description="Per model alias or service name: its own "
        "concurrency, attempts and timeout.")

    @field_validator("targets")
    @classmethod
    def _names(cls, value: dict[str, JobTargetConfig]) -> dict[str, JobTargetConfig]:
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"target name {name!r} may use letters, digits and . _ : - "
                                 "(at most 128 chars)")
        return value

    def for_target(self, name: str) -> JobTargetConfig:
        """The effective settings of a target (its own, else the defaults)."""
        own = self.targets.get(name) or JobTargetConfig()
        return JobTargetConfig(concurrency=own.concurrency or self.concurrency,
                               max_attempts=own.max_attempts or self.max_attempts,
                               timeout_s=own.timeout_s or self.timeout_s)


class BatchesConfig(Section):
    """The Batch API (`/v1/batches`) and the files it reads and writes (`/v1/files`)."""

    files_dir: str | None = Field(
        None, description="Where uploaded and produced files are kept (replicas must share "
        "it). Default: `files/` beside a SQLite store, else `.shipyard/files`.")
    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="Largest file an upload may be (OpenAI's "
        "batch limit is 200 MB).")
    max_lines: int = Field(
        1_000_000, ge=1, description="Most requests (lines) one batch input file may hold.")
    concurrency: int = Field(
        2, ge=1, le=64, description="Batches processed at once per gateway process.")
    line_concurrency: int = Field(
        16, ge=1, le=1024, description="Requests of one batch in flight at once (each goes "
        "through its target's full chain, at batch priority).")
    line_max_attempts: int = Field(
        3, ge=1, le=20, description="Attempts per line on a 408, 429 or 5xx answer before "
        "it is written to the error file.")
    max_attempts: int = Field(
        20, ge=1, le=1000, description="Times a batch is taken up again after the gateway "
        "running it died (it resumes from its last checkpoint) before it fails.")
    checkpoint_s: float = Field(
        1.0, gt=0, le=60, description="How often a running batch makes its progress durable "
        "(output written so far, request counts); after a crash at most this much work is "
        "done again.")
    completion_windows: list[str] = Field(
        default_factory=lambda: ["24h"], description="Accepted `completion_window` values "
        "(durations such as `24h`, `1h`, `30m`); a batch not finished within its window "
        "expires.")
    file_retention_days: float = Field(
        30.0, ge=0, description="Files (uploads and batch outputs) are deleted this many days "
        "after they were created; 0 keeps them until deleted.")

    @field_validator("completion_windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one completion window, e.g. ['24h']")
        for window in value:
            parse_window(window)
        return value


def parse_window(value: str) -> float:
    """`24h` / `30m` / `90s` / `2d` -> seconds; ValueError naming the value otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    text = value.strip()
    if len(text) >= 2 and text[-1] in units and text[:-1].isdigit() and int(text[:-1]) > 0:
        return float(int(text[:-1]) * units[text[-1]])
    raise ValueError(f"completion window {value!r} must be a positive whole number followed "
                     "by s, m, h or d, e.g. 24h")
