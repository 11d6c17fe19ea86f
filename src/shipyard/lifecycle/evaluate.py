"""`shipyard eval`: score a version on a dataset, compare it with stable, gate on the result.

Classifiers (tabular datasets) are scored in batches: one `predict_proba` call per 256k rows,
straight on the loaded artifact, so an eval runs at the model's own speed. Metrics: accuracy,
precision, recall, F1 (binary: the positive class is the second of `classes_`; otherwise
macro averages), ROC AUC, and calibration (Brier score and the expected calibration error
over ten bins, with the bins kept for the report's reliability diagram), plus rows per
second.

Functions (text datasets) are called once per row: exact match, contains, regex
(`expected` is then a pattern), JSON-schema validity (`--schema`), semantic similarity
(cosine of the packaged MiniLM sentence embeddings, the `embeddings` extra), agreement with
a structured expected answer, grounding (the fraction of the answer's claims its row's
`context` supports, judged by the grounding guard's own scoring), and an LLM judge's 0-1
score when a judge model is given;
plus latency percentiles (a local model or function has no per-call price; the cost of
served traffic per version is on its traces).

Gates (`--gate`) compare a metric with a number (`accuracy>=0.9`) or with stable's value
(`f1>=stable-0.01`, `ece<=stable+0.02`).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shipyard.errors import InvalidRequest
from shipyard.lifecycle.artifacts import ModelCaller
from shipyard.lifecycle.serving import same_answer

__all__ = ["TEXT_METRICS", "Gate", "check_gates", "compare_gate", "evaluate_classifier",
           "evaluate_text", "parse_gate"]

TEXT_METRICS = ("exact", "contains", "regex", "json_schema", "similarity", "agree",
                "grounding", "judge")
BATCH = 262_144


def _need_sklearn() -> Any:
    try:
        from sklearn import metrics
    except ImportError as exc:
        raise InvalidRequest(f"Classifier metrics need scikit-learn ({exc}); install it with "
                             "pip install 'shipyard[lifecycle]'.") from None
    return metrics


def evaluate_classifier(caller: ModelCaller, x: Any, y: Sequence[Any], *,
                        batch: int = BATCH) -> dict[str, Any]:
    """Every classifier metric of one version on (x, y). The metrics are computed with
    numpy from one confusion count and one sort (the ROC curve), equal to scikit-learn's
    (a test pins them), so the model's own predict time dominates."""
    import numpy as np

    x = np.asarray(x)
    started = time.perf_counter()
    labels_parts, proba_parts = [], []
    for start in range(0, len(x), batch):
        labels, proba = caller.scores(x[start:start + batch])
        labels_parts.append(np.asarray(labels))
        if proba is not None:
            proba_parts.append(proba)
    predict_s = time.perf_counter() - started
    predicted = (labels_parts[0] if len(labels_parts) == 1 else np.concatenate(labels_parts)
                 ) if labels_parts else np.asarray([])
    truth = np.asarray(y)
    if truth.dtype.kind in "iuf" and predicted.dtype.kind in "iuf":
        predicted = predicted.astype(truth.dtype, copy=False)
    else:
        truth, predicted = truth.astype(str), predicted.astype(str)
    classes = caller.classes() or sorted(set(truth.tolist()))
    binary = len(classes) == 2
    out: dict[str, Any] = {"rows": len(truth),
                           "accuracy": float(np.count_nonzero(truth == predicted) / len(truth))
                           if len(truth) else 0.0}
    positive: Any = None
    if binary:
        positive = np.asarray([classes[1]]).astype(truth.dtype)[0]
        is_positive = truth == positive
        said_positive = predicted == positive
        tp = int(np.count_nonzero(is_positive & said_positive))
        fp = int(np.count_nonzero(~is_positive & said_positive))
        fn = int(np.count_nonzero(is_positive & ~said_positive))
        out["precision"] = tp / (tp + fp) if tp + fp else 0.0
        out["recall"] = tp / (tp + fn) if tp + fn else 0.0
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    else:
        out.update(_macro(truth, predicted))
    out["predict_s"] = round(predict_s, 6)
    out["rows_per_s"] = round(len(truth) / predict_s, 1) if predict_s > 0 else None
    if proba_parts and binary:
        proba = (proba_parts[0] if len(proba_parts) == 1 else np.concatenate(proba_parts))[:, 1]
        hits = (truth == positive).astype(np.float64)
        if 0 < hits.sum() < len(hits):
            fpr, tpr = _roc(proba, hits)
            out["roc_auc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
            step = max(1, len(fpr) // 200)  # enough points for the plot, not thousands
            out["roc_curve"] = {"fpr": fpr[::step].round(4).tolist(),
                                "tpr": tpr[::step].round(4).tolist()}
        out["brier"] = float(np.mean((proba - hits) ** 2))
        out.update(_calibration(proba, hits))
    elif proba_parts:
        metrics = _need_sklearn()
        proba = np.concatenate(proba_parts)
        with contextlib.suppress(ValueError):
            out["roc_auc"] = float(metrics.roc_auc_score(truth, proba, multi_class="ovr",
                                                         labels=classes))
    out["total_s"] = round(time.perf_counter() - started, 6)
    return out


def _roc(score: Any, hits: Any) -> tuple[Any, Any]:
    """The ROC curve at every distinct score (ties handled as scikit-learn does)."""
    import numpy as np

    order = np.argsort(-score)  # ties are grouped below, so their order does not matter
    ordered, ordered_hits = score[order], hits[order]
    last = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]
    tps = np.cumsum(ordered_hits)[last]
    fps = 1 + last - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def _macro(truth: Any, predicted: Any) -> dict[str, float]:
    """Macro-averaged precision, recall and F1 over the labels seen in either column."""
    import numpy as np

    labels, codes = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
    k, n = len(labels), len(truth)
    matrix = np.bincount(codes[:n] * k + codes[n:], minlength=k * k).reshape(k, k)
    tp = np.diag(matrix).astype(np.float64)
    said, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, said, out=np.zeros(k), where=said > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(k), where=both > 0)
    return {"precision": float(precision.mean()), "recall": float(recall.mean()),
            "f1": float(f1.mean())}


def _calibration(proba: Any, truth: Any, bins: int = 10) -> dict[str, Any]:
    import numpy as np

    index = np.minimum((proba * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    mean_p = np.bincount(index, weights=proba, minlength=bins).astype(np.float64)
    mean_y = np.bincount(index, weights=truth, minlength=bins).astype(np.float64)
    kept = counts > 0
    mean_p[kept] /= counts[kept]
    mean_y[kept] /= counts[kept]
    ece = float(np.sum(counts[kept] / counts.sum() * np.abs(mean_p[kept] - mean_y[kept])))
    return {"ece": ece, "calibration": {"predicted": mean_p[kept].round(4).tolist(),
                                        "observed": mean_y[kept].round(4).tolist(),
                                        "count": counts[kept].tolist()}}


@dataclass
class _TextTools:
    schema: Any = None
    embed: Callable[[list[str]], Any] | None = None
    judge: Callable[[Any, Any, Any], float | None] | None = None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    import orjson

    return orjson.dumps(value).decode()


def _passages_of(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v if isinstance(v, str) else _text(v) for v in value if v is not None]
    return [_text(value)]


def evaluate_text(function: Callable[[Any], Any], inputs: Sequence[Any],
                  expected: Sequence[Any], *, metrics: Sequence[str] = ("exact", "contains"),
                  schema: dict[str, Any] | None = None,
                  embed: Callable[[list[str]], Any] | None = None,
                  judge: Callable[[Any, Any, Any], float | None] | None = None,
                  contexts: Sequence[Any] | None = None,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Call `function` on every input and score its answers (see the module docstring).
    `contexts`: each row's retrieved context (a text or a list of texts), for `grounding`."""
    unknown = [m for m in metrics if m not in TEXT_METRICS]
    if unknown:
        raise InvalidRequest(f"Unknown metric(s) {', '.join(unknown)}; use "
                             f"{', '.join(TEXT_METRICS)}.", param="metric")
    passages: list[list[str]] = [_passages_of(c) for c in contexts or []]
    if "grounding" in metrics and not any(passages):
        raise InvalidRequest("The grounding metric needs a 'context' column in the dataset "
                             "(each row's retrieved text, or a list of texts) to check the "
                             "answers against.", param="metric")
    from shipyard.guards.grounding import grounding_score  # the grounding guard's scoring
    validator = None
    if "json_schema" in metrics:
        if schema is None:
            raise InvalidRequest("The json_schema metric needs --schema FILE (a JSON Schema "
                                 "the answers must match).", param="schema")
        import jsonschema

        validator = jsonschema.validators.validator_for(schema)(schema)
    scores: dict[str, list[float]] = {m: [] for m in metrics if m != "similarity"}
    latencies: list[float] = []
    answers: list[Any] = []
    errors = 0
    for i, (item, want) in enumerate(zip(inputs, expected, strict=True)):
        started = time.perf_counter()
        try:
            got = function(item)
        except Exception:
            got = None
            errors += 1
        latencies.append((time.perf_counter() - started) * 1000.0)
        if isinstance(got, dict) and "output" in got and isinstance(want, str):
            got = got["output"]
        answers.append(got)
        text, wanted = _text(got) if got is not None else "", _text(want)
        for metric in scores:
            if metric == "exact":
                scores[metric].append(float(text.strip() == wanted.strip()))
            elif metric == "contains":
                scores[metric].append(float(wanted.strip().lower() in text.lower()))
            elif metric == "regex":
                scores[metric].append(float(re.search(wanted, text) is not None))
            elif metric == "agree":
                scores[metric].append(float(got is not None and same_answer(got, want)))
            elif metric == "json_schema" and validator is not None:
                parsed: Any = got
                if isinstance(got, str):
                    try:
                        import orjson

                        parsed = orjson.loads(got)
                    except ValueError:
                        parsed = None
                scores[metric].append(float(parsed is not None and validator.is_valid(parsed)))
            elif metric == "grounding":
                grounded = (grounding_score(text, passages[i]) if i < len(passages)
                            else None)
                if grounded is not None:  # no context or no claim on this row: not scored
                    scores[metric].append(grounded)
            elif metric == "judge":
                if judge is None:
                    raise InvalidRequest("The judge metric needs a judge model "
                                         "(--judge-url and --judge-model).", param="metric")
                value = judge(item, got, want)
                if value is not None:
                    scores[metric].append(value)
        if progress is not None:
            progress(i + 1)
    out: dict[str, Any] = {"rows": len(answers), "errors": errors,
                           "error_rate": errors / len(answers) if answers else 0.0}
    for metric, values in scores.items():
        out[metric] = sum(values) / len(values) if values else None
    if "similarity" in metrics:
        if embed is None:
            raise InvalidRequest("The similarity metric needs the packaged MiniLM model: "
                                 "pip install 'shipyard[embeddings]'.", param="metric")
        import numpy as np

        got_vectors = np.asarray(embed([_text(a) if a is not None else "" for a in answers]))
        want_vectors = np.asarray(embed([_text(w) for w in expected]))
        out["similarity"] = float(np.mean(np.sum(got_vectors * want_vectors, axis=1)))
    ordered = sorted(latencies)
    if ordered:
        out["latency_p50_ms"] = ordered[len(ordered) // 2]
        out["latency_p95_ms"] = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    out["latencies_ms"] = [round(v, 3) for v in latencies[:5000]]
    out["answers"] = [a if isinstance(a, str | int | float | bool | type(None)) else _text(a)
                      for a in answers[:200]]
    return out


# -- gates -------------------------------------------------------------------------------------

_GATE = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|>|<)\s*(stable\s*[+-]\s*)?([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Gate:
    """`metric op value` or `metric op stable±delta`."""

    metric: str
    op: str
    value: float
    relative: bool = False

    def text(self) -> str:
        if self.relative:
            return f"{self.metric}{self.op}stable{self.value:+g}"
        return f"{self.metric}{self.op}{self.value:g}"

    def check(self, candidate: dict[str, Any],
              baseline: dict[str, Any] | None) -> str | None:
        """None when the gate passes, else why it does not."""
        got = candidate.get(self.metric)
        if not isinstance(got, int | float):
            return f"{self.text()}: the candidate has no '{self.metric}'"
        limit = self.value
        if self.relative:
            base = None if baseline is None else baseline.get(self.metric)
            if not isinstance(base, int | float):
                return f"{self.text()}: no stable '{self.metric}' to compare with"
            limit = base + self.value
        ok = {">=": got >= limit, "<=": got <= limit, ">": got > limit, "<": got < limit}
        if ok[self.op]:
            return None
        return f"{self.text()}: {self.metric} is {got:.4g}, needs {self.op} {limit:.4g}"


def parse_gate(spec: str) -> Gate:
    match = _GATE.match(spec)
    if match is None:
        raise InvalidRequest(f"--gate '{spec}' is not a gate; write METRIC>=NUMBER or "
                             "METRIC>=stable-DELTA, e.g. accuracy>=0.9 or f1>=stable-0.01.",
                             param="gate")
    metric, op, relative, number = match.groups()
    value = float(number)
    if relative and relative.replace(" ", "").endswith("-"):
        value = -value
    return Gate(metric, op, value, relative=relative is not None)


def check_gates(gates: Sequence[Gate], candidate: dict[str, Any],
                baseline: dict[str, Any] | None) -> list[str]:
    return [why for gate in gates if (why := gate.check(candidate, baseline)) is not None]


def compare_gate(candidate: dict[str, Any], baseline: dict[str, Any] | None,
                 gate: dict[str, float]) -> list[str]:
    """`retrain.gate`: metric → least (candidate - stable); without stable, nothing fails."""
    if baseline is None:
        return []
    gates = [Gate(metric, ">=", delta, relative=True) for metric, delta in gate.items()]
    return check_gates(gates, candidate, baseline)
