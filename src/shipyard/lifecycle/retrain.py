"""The retraining loop of a model service, one recorded step at a time:

1. `collect`: the base training data (`retrain.data`, minus a held-out share), labelled
   production feedback (the traced input's `features` and the feedback's label) and
   reviewed escalations (the reviewer's answer as the label), written as one JSONL file and
   run through `shipyard data` (exact de-duplication, PII cleaning of text columns, typed
   columns, every row accounted for) into a versioned Parquet dataset;
2. `train`: the user's `module:function(dataset_path, output_dir) -> artifact path`;
3. `register`: the artifact becomes a new version (content-addressed, hash-checked);
4. `evaluate`: the new version against stable on the held-out rows (`evaluate.py`),
   stored per version; `retrain.gate` decides whether it may go on;
5. `rollout`: a canary (or shadow) under the service's rollout policy; the controller
   promotes it or rolls it back.

Every step's result is saved in `retrain_jobs` as it completes. A job whose process died
(its heartbeat is older than `lifecycle.lease_s`) is resumed from the step it was in by
`shipyard retrain NAME --resume` or by the gateway's controller; completed steps are not
run again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import Engine, func, insert, select, update

from shipyard.config.lifecycle import RetrainConfig
from shipyard.config.schema import Config
from shipyard.config.targets import ServiceConfig
from shipyard.errors import Conflict, NotFound, ShipyardError
from shipyard.lifecycle import registry
from shipyard.lifecycle.artifacts import ModelCaller, artifact_dir, load_model
from shipyard.providers.loading import import_object
from shipyard.store.tables import drift_results, feedback, retrain_jobs, traces

__all__ = ["STEPS", "RetrainJob", "claim_stale", "due_triggers", "get_job", "list_jobs",
           "start_job"]

log = logging.getLogger("shipyard.lifecycle")
STEPS = ("collect", "train", "register", "evaluate", "rollout")


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _job(row: Any) -> dict[str, Any]:
    return {"id": row.id, "target": row.target, "trigger": row.trigger, "state": row.state,
            "step": row.step, "steps": orjson.loads(row.steps), "error": row.error,
            "holder": row.holder, "heartbeat_at": _utc(row.heartbeat_at),
            "created_at": _utc(row.created_at), "updated_at": _utc(row.updated_at)}


def list_jobs(engine: Engine, target: str | None = None, *,
              limit: int = 50) -> list[dict[str, Any]]:
    query = select(retrain_jobs).order_by(retrain_jobs.c.created_at.desc()).limit(limit)
    if target is not None:
        query = query.where(retrain_jobs.c.target == target)
    with engine.connect() as connection:
        return [_job(r) for r in connection.execute(query)]


def get_job(engine: Engine, job_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        row = connection.execute(select(retrain_jobs).where(
            retrain_jobs.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"There is no retraining job '{job_id}'; see 'shipyard retrain "
                       "NAME --list'.", param="job")
    return _job(row)


def start_job(engine: Engine, target: str, trigger: str, *, holder: str) -> str:
    """Create a job (refused while another job of the target is running and alive)."""
    now = _now()
    with engine.begin() as connection:
        running = connection.execute(select(retrain_jobs.c.id).where(
            retrain_jobs.c.target == target, retrain_jobs.c.state == "running")).first()
        if running is not None:
            raise Conflict(f"'{target}' already has a retraining job running ({running.id}); "
                           f"wait for it or resume it with 'shipyard retrain {target} "
                           "--resume'.")
        job_id = os.urandom(16).hex()
        connection.execute(insert(retrain_jobs).values(
            id=job_id, target=target, trigger=trigger[:64], state="running", step=STEPS[0],
            steps="{}", holder=holder[:128], heartbeat_at=now, created_at=now,
            updated_at=now))
        registry.record_event(connection, target, "retrain_started", version=None,
                              actor=holder, details={"job": job_id, "trigger": trigger}, at=now)
    return job_id


def claim_stale(engine: Engine, *, holder: str, stale_s: float,
                target: str | None = None) -> list[str]:
    """Take over running jobs whose holder stopped beating (its process died)."""
    cutoff = _now() - timedelta(seconds=stale_s)
    query = select(retrain_jobs.c.id).where(retrain_jobs.c.state == "running",
                                            retrain_jobs.c.heartbeat_at < cutoff)
    if target is not None:
        query = query.where(retrain_jobs.c.target == target)
    taken = []
    with engine.begin() as connection:
        for (job_id,) in connection.execute(query).all():
            done = connection.execute(update(retrain_jobs).where(
                retrain_jobs.c.id == job_id, retrain_jobs.c.heartbeat_at < cutoff).values(
                holder=holder[:128], heartbeat_at=_now())).rowcount
            if done:
                taken.append(job_id)
    return taken


def due_triggers(engine: Engine, target: str, config: RetrainConfig, *,
                 holder: str) -> list[str]:
    """Triggers that fired since the target's last job: a drift result, enough new
    labelled feedback, the schedule. At most one is returned (one job at a time)."""
    with engine.connect() as connection:
        last = connection.execute(select(func.max(retrain_jobs.c.created_at)).where(
            retrain_jobs.c.target == target)).scalar()
        running = connection.execute(select(retrain_jobs.c.id).where(
            retrain_jobs.c.target == target, retrain_jobs.c.state == "running")).first()
    if running is not None:
        return []
    last = _utc(last)
    if config.on_drift is not None:
        query = select(func.max(drift_results.c.at)).where(
            drift_results.c.check_name == config.on_drift, drift_results.c.dataset_drift)
        if last is not None:
            query = query.where(drift_results.c.at > last)
        with engine.connect() as connection:
            if connection.execute(query).scalar() is not None:
                return [f"drift:{config.on_drift}"]
    if config.feedback_count is not None:
        query = select(func.count()).select_from(feedback).where(
            feedback.c.service == target, feedback.c.label.is_not(None))
        if last is not None:
            query = query.where(feedback.c.created_at > last)
        with engine.connect() as connection:
            if int(connection.execute(query).scalar() or 0) >= config.feedback_count:
                return ["feedback"]
    if config.schedule_s is not None and (
            last is None or _now() - last >= timedelta(seconds=config.schedule_s)):
        return ["schedule"]
    return []


def _label(value: Any) -> Any:
    """A label as the base data holds it: numbers stay numbers, numeric text becomes one."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    return value


def _features_in(value: Any) -> list[float] | None:
    """The single row of `features` inside a request (a dict, JSON text or a chat)."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if isinstance(value, dict):
        features = value.get("features")
        if isinstance(features, list) and features and not isinstance(features[0], list):
            return features
        for item in value.values():
            found = _features_in(item)
            if found is not None:
                return found
    if isinstance(value, list):
        for item in value:
            found = _features_in(item)
            if found is not None:
                return found
    return None


class RetrainJob:
    """Runs (or resumes) one job; see the module docstring."""

    def __init__(self, engine: Engine, config: Config, job_id: str, *, holder: str,
                 progress: Callable[[str, str], None] | None = None) -> None:
        self.engine = engine
        self.config = config
        self.job = get_job(engine, job_id)
        self.id = job_id
        self.target = self.job["target"]
        service = config.services.get(self.target)
        if service is None or service.retrain is None:
            raise Conflict(f"Service '{self.target}' has no 'retrain:' section in the config; "
                           "add one (see docs/lifecycle.md).")
        self.service: ServiceConfig = service
        self.retrain: RetrainConfig = service.retrain
        self.holder = holder
        self.progress = progress or (lambda step, text: None)
        self.folder = (artifact_dir(config).parent / "jobs" / job_id).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)

    # -- bookkeeping --------------------------------------------------------------------------
    def _save(self, step: str, result: dict[str, Any] | None, *, state: str = "running",
              error: str | None = None, next_step: str | None = None) -> None:
        steps = dict(self.job["steps"])
        if result is not None:
            steps[step] = result
        now = _now()
        with self.engine.begin() as connection:
            connection.execute(update(retrain_jobs).where(retrain_jobs.c.id == self.id).values(
                steps=orjson.dumps(steps).decode(), step=next_step or step, state=state,
                error=error, heartbeat_at=now, updated_at=now, holder=self.holder[:128]))
            if state != "running" or result is not None:
                registry.record_event(
                    connection, self.target, f"retrain_{step}" if state == "running"
                    else f"retrain_{state}", version=steps.get("register", {}).get("version"),
                    actor=self.holder, details={"job": self.id, "step": step,
                                                "result": result, "error": error}, at=now)
        self.job["steps"] = steps
        self.job["state"] = state

    def _beat(self, stop: threading.Event) -> None:
        """Keep the job's heartbeat fresh while a long step (training) runs, so no one
        takes over a job that is alive."""
        every = max(0.5, self.config.lifecycle.lease_s / 3)
        while not stop.wait(every):
            try:
                with self.engine.begin() as connection:
                    connection.execute(update(retrain_jobs).where(
                        retrain_jobs.c.id == self.id, retrain_jobs.c.state == "running").values(
                        heartbeat_at=_now()))
            except Exception:  # a store hiccup: the next beat tries again
                log.warning("retrain %s: heartbeat failed", self.id)

    def run(self) -> dict[str, Any]:
        """Run every step not yet done; returns the job as stored."""
        if self.job["state"] != "running":
            return self.job
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(stop,), daemon=True,
                                name=f"retrain-{self.id[:8]}")
        beat.start()
        try:
            return self._steps()
        finally:
            stop.set()
            beat.join(5)

    def _steps(self) -> dict[str, Any]:
        for i, step in enumerate(STEPS):
            if step in self.job["steps"]:
                continue
            self.progress(step, "running")
            try:
                result = getattr(self, f"_{step}")()
            except Exception as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                log.warning("retrain %s of %s failed at %s: %s", self.id, self.target, step,
                            message)
                self._save(step, None, state="failed", error=message[:2000])
                raise
            following = STEPS[i + 1] if i + 1 < len(STEPS) else step
            stop = isinstance(result, dict) and result.get("stop")
            self._save(step, result, next_step=following,
                       state="done" if stop or i + 1 == len(STEPS) else "running")
            self.progress(step, "done")
            if stop:
                break
        return get_job(self.engine, self.id)

    # -- steps --------------------------------------------------------------------------------
    def _base(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The base data split into (train, holdout) by a stable hash of each row."""
        if self.retrain.data is None:
            return [], []
        from shipyard.lifecycle.datasets import read_table  # pyarrow: the `data` extra

        table = read_table(Path(self.retrain.data))
        columns = [*self.retrain.features, self.retrain.label]
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ShipyardError(f"retrain.data '{self.retrain.data}' has no column(s) "
                                f"{', '.join(missing)}; it has {', '.join(table.column_names)}.")
        rows = table.select(columns).to_pylist()
        if self.retrain.eval_data is not None:
            held = read_table(Path(self.retrain.eval_data))
            missing = [c for c in columns if c not in held.column_names]
            if missing:
                raise ShipyardError(f"retrain.eval_data '{self.retrain.eval_data}' has no "
                                    f"column(s) {', '.join(missing)}.")
            return rows, held.select(columns).to_pylist()
        train: list[dict[str, Any]] = []
        holdout: list[dict[str, Any]] = []
        cut = int(self.retrain.holdout * 1000)
        for i, row in enumerate(rows):
            (holdout if _hash_slot(i) < cut else train).append(row)
        return train, holdout

    def _collect(self) -> dict[str, Any]:
        features = self.retrain.features
        label = self.retrain.label
        if not features:
            raise ShipyardError(f"services.{self.target}.retrain.features is empty; list the "
                                "feature columns in the order the model takes them.")
        train, holdout = self._base()
        counts = {"base": len(train), "holdout": len(holdout), "feedback": 0,
                  "escalations": 0, "skipped": 0}
        for source, values, answer in self._production():
            if values is None or len(values) != len(features) or answer is None:
                counts["skipped"] += 1
                continue
            train.append({**dict(zip(features, values, strict=True)), label: answer})
            counts[source] += 1
        raw = self.folder / "collected.jsonl"
        with raw.open("wb") as out:
            for row in train:
                out.write(orjson.dumps(row) + b"\n")
        holdout_path = self.folder / "holdout.jsonl"
        with holdout_path.open("wb") as out:
            for row in holdout:
                out.write(orjson.dumps(row) + b"\n")
        report = self._clean(raw, train)
        return {**counts, "dataset": str(Path(report.path or "") / "data.parquet"),
                "rows": report.rows_out, "duplicates_removed": report.duplicates_removed,
                "quarantined": report.rows_quarantined, "pii": report.pii,
                "holdout_path": str(holdout_path), "dataset_version": report.version}

    def _production(self) -> list[tuple[str, list[float] | None, Any]]:
        """(source, features, label) of labelled feedback and reviewed escalations."""
        out: list[tuple[str, list[float] | None, Any]] = []
        query = (select(feedback.c.label, traces.c.request_body)
                 .select_from(feedback.join(traces, traces.c.id == feedback.c.trace_id))
                 .where(feedback.c.service == self.target, feedback.c.label.is_not(None))
                 .order_by(feedback.c.created_at))
        cipher = _cipher(self.config)
        with self.engine.connect() as connection:
            for label, body in connection.execute(query):
                text = cipher.decrypt(body) if cipher is not None and body else body
                out.append(("feedback", _features_in(text), _label(label)))
        from shipyard.escalation.store import iter_feedback

        for row in iter_feedback(self.engine):
            if row.get("service") != self.target:
                continue
            out.append(("escalations", _features_in(row.get("conversation")),
                        _label(row.get("answer"))))
        return out

    def _clean(self, raw: Path, rows: list[dict[str, Any]]) -> Any:
        """De-duplicate and PII-clean through `shipyard data` (a versioned dataset)."""
        from shipyard.data.config import (
            ColumnSpec,
            DedupSpec,
            OutputSpec,
            PiiSpec,
            PipelineConfig,
            SchemaSpec,
            SourceSpec,
        )
        from shipyard.data.pipeline import run_pipeline

        label = self.retrain.label
        sample = next((r[label] for r in rows if r.get(label) is not None), None)
        label_type: Literal["int", "float", "string"] = "string"
        if isinstance(sample, int) and not isinstance(sample, bool):
            label_type = "int"
        elif isinstance(sample, float):
            label_type = "float"
        columns = {f: ColumnSpec(type="float", required=True) for f in self.retrain.features}
        columns[label] = ColumnSpec(type=label_type, required=True)
        text = [label] if label_type == "string" else []
        pipeline = PipelineConfig(
            name=f"retrain-{self.target}"[:128].replace(":", "-"),
            source=SourceSpec(path=str(raw)),
            schema_=SchemaSpec(columns=columns),
            dedup=DedupSpec(exact=True),
            pii=PiiSpec(columns=text) if text else None,
            output=OutputSpec(dir=str(self.folder / "datasets")),
            base_dir=str(self.folder))
        report = run_pipeline(pipeline, store=self.engine)
        report.check()  # every row accounted for: out + quarantined + duplicates = in
        return report

    def _train(self) -> dict[str, Any]:
        dataset = self.job["steps"]["collect"]["dataset"]
        function = import_object(self.retrain.function,
                                 key=f"services.{self.target}.retrain.function")
        output = self.folder / "artifact"
        output.mkdir(exist_ok=True)
        artifact = function(str(dataset), str(output))
        path = Path(str(artifact))
        if not path.is_file():
            raise ShipyardError(f"The training function '{self.retrain.function}' returned "
                                f"'{artifact}', which is not a file; return the path of the "
                                "model file it wrote.")
        return {"artifact": str(path)}

    def _register(self) -> dict[str, Any]:
        collect = self.job["steps"]["collect"]
        version, new = registry.register_version(
            self.engine, self.target, model=Path(self.job["steps"]["train"]["artifact"]),
            call=self.service.call, artifact_dir=artifact_dir(self.config),
            actor=f"retrain:{self.id}",
            meta={"source": "retrain", "job": self.id, "trigger": self.job["trigger"],
                  "dataset": collect["dataset"], "rows": collect["rows"],
                  "feedback_rows": collect["feedback"],
                  "escalation_rows": collect["escalations"]})
        return {"version": version.number, "new": new}

    def _evaluate(self) -> dict[str, Any]:
        from shipyard.lifecycle.evaluate import compare_gate, evaluate_classifier

        number = self.job["steps"]["register"]["version"]
        stable = registry.aliases_of(self.engine, self.target).get(self.target, {}).get(
            "stable")
        holdout = self.job["steps"]["collect"]["holdout_path"]
        rows = [orjson.loads(line) for line in Path(holdout).read_bytes().splitlines() if line]
        if not rows:
            return {"skipped": "no held-out rows (retrain.data is not set)", "passed": True}
        x = [[float(r[f]) for f in self.retrain.features] for r in rows]
        y = [r[self.retrain.label] for r in rows]
        candidate = evaluate_classifier(self._caller(number), x, y)
        baseline = (evaluate_classifier(self._caller(stable), x, y)
                    if stable is not None and stable != number else None)
        failures = compare_gate(candidate, baseline, self.retrain.gate)
        run = registry.save_eval(self.engine, self.target, version=number, baseline=stable,
                                 dataset=f"retrain:{self.id}:holdout", rows=len(rows),
                                 metrics=candidate, baseline_metrics=baseline,
                                 passed=not failures, actor=f"retrain:{self.id}")
        result = {"run": run, "stable": stable, "passed": not failures,
                  "failures": failures, "accuracy": candidate.get("accuracy"),
                  "stable_accuracy": baseline.get("accuracy") if baseline else None}
        if failures:
            result["stop"] = True
        return result

    def _caller(self, number: int) -> ModelCaller:
        version = registry.get_version(self.engine, self.target, number)
        if version.artifact is None:
            raise Conflict(f"Version {number} of '{self.target}' is a function, not a model; "
                           "retraining evaluates model versions.")
        return ModelCaller(load_model(version.artifact), version.call or "predict_proba",
                           name=self.target)

    def _rollout(self) -> dict[str, Any]:
        number = self.job["steps"]["register"]["version"]
        stable = registry.aliases_of(self.engine, self.target).get(self.target, {}).get(
            "stable")
        if stable == number:
            return {"skipped": f"version {number} is already stable"}
        policy = self.service.rollout
        rollout = registry.start_rollout(self.engine, self.target, number, mode=policy.mode,
                                         share=policy.steps[0], actor=f"retrain:{self.id}")
        return {"rollout": rollout.id, "mode": rollout.mode, "share": rollout.share}


def _hash_slot(i: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=4).digest()) % 1000


def _cipher(config: Config) -> Any:
    keys = [k.get_secret_value() for k in config.traces.encryption_keys]
    if not keys:
        return None
    from shipyard.security.crypto import PayloadCipher

    return PayloadCipher(keys)
