"""One `shipyard eval` run: load the candidate and the baseline versions from the registry,
score both on the same dataset, apply the gates, store the result per version.

>>> result = run_eval(engine, config, "cancer", dataset, candidate=2)  # doctest: +SKIP
>>> result["failures"]  # doctest: +SKIP
[]
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import Engine

from shipyard.config.schema import Config
from shipyard.errors import InvalidRequest
from shipyard.lifecycle import registry
from shipyard.lifecycle.artifacts import ModelCaller, load_model
from shipyard.lifecycle.datasets import EvalDataset
from shipyard.lifecycle.evaluate import (
    Gate,
    check_gates,
    evaluate_classifier,
    evaluate_text,
)
from shipyard.providers.loading import import_object

__all__ = ["judge_client", "load_callable", "run_eval", "select_version"]


def select_version(engine: Engine, target: str, spec: str | int | None) -> int | None:
    """A version number from `spec`: a number, an alias name, or None."""
    if spec is None:
        return None
    if isinstance(spec, int) or str(spec).isdigit():
        return int(spec)
    aliases = registry.aliases_of(engine, target).get(target, {})
    if str(spec) not in aliases:
        raise InvalidRequest(f"'{target}' has no alias '{spec}' (it has "
                             f"{', '.join(sorted(aliases)) or 'none'}); give a version number "
                             "or an alias.", param="version")
    return aliases[str(spec)]


def load_callable(engine: Engine, target: str, number: int) -> tuple[Callable[[Any], Any],
                                                                       ModelCaller | None]:
    version = registry.get_version(engine, target, number)
    if version.artifact is not None:
        caller = ModelCaller(load_model(version.artifact), version.call or "predict_proba",
                             name=target)
        return caller, caller
    function = import_object(version.function or "", key=f"{target} version {number}")
    return function, None


def _score(engine: Engine, target: str, number: int, dataset: EvalDataset, *,
           metrics: Sequence[str], schema: dict[str, Any] | None,
           embed: Callable[[list[str]], Any] | None,
           judge: Callable[[Any, Any, Any], float | None] | None,
           progress: Callable[[int], None] | None) -> dict[str, Any]:
    function, caller = load_callable(engine, target, number)
    if dataset.kind == "tabular":
        if caller is None:
            rows = dataset.x.tolist()
            return evaluate_text(lambda row: function({"features": row}), rows,
                                 dataset.y, metrics=["agree"], progress=progress)
        return evaluate_classifier(caller, dataset.x, dataset.y)
    return evaluate_text(function, dataset.inputs, dataset.expected, metrics=metrics,
                         schema=schema, embed=embed, judge=judge, contexts=dataset.context,
                         progress=progress)


def run_eval(engine: Engine, config: Config | None, target: str, dataset: EvalDataset, *,
             candidate: int, baseline: int | None = None, gates: Sequence[Gate] = (),
             metrics: Sequence[str] = ("exact", "contains"),
             schema: dict[str, Any] | None = None,
             embed: Callable[[list[str]], Any] | None = None,
             judge: Callable[[Any, Any, Any], float | None] | None = None,
             store: bool = True, actor: str = "cli",
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score `candidate` (and `baseline`, on the same rows); see the module docstring."""
    if len(dataset) == 0:
        raise InvalidRequest(f"The dataset '{dataset.name}' has no rows.", param="dataset")
    if baseline == candidate:
        baseline = None
    result: dict[str, Any] = {"target": target, "dataset": dataset.name, "rows": len(dataset),
                              "kind": dataset.kind, "candidate_version": candidate,
                              "candidate_label": f"v{candidate}",
                              "baseline_version": baseline,
                              "baseline_label": f"v{baseline}" if baseline else None}
    result["candidate"] = _score(engine, target, candidate, dataset, metrics=metrics,
                                 schema=schema, embed=embed, judge=judge, progress=progress)
    result["baseline"] = (_score(engine, target, baseline, dataset, metrics=metrics,
                                 schema=schema, embed=embed, judge=judge, progress=progress)
                          if baseline is not None else None)
    result["gates"] = [g.text() for g in gates]
    result["failures"] = check_gates(gates, result["candidate"], result["baseline"])
    result["passed"] = not result["failures"] if gates else None
    if store:
        result["run_id"] = registry.save_eval(
            engine, target, version=candidate, baseline=baseline, dataset=dataset.name,
            rows=len(dataset), metrics=_stored(result["candidate"]),
            baseline_metrics=_stored(result["baseline"]) if result["baseline"] else None,
            passed=result["passed"], actor=actor)
    return result


def _stored(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps of a result: numbers (curves and answers stay in the report)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not
            isinstance(v, bool)}


_NUMBER = re.compile(r"([01](?:\.\d+)?|\.\d+)")


def judge_client(url: str, model: str, *, api_key: str | None = None,
                 timeout_s: float = 60.0) -> Callable[[Any, Any, Any], float | None]:
    """An LLM judge on any OpenAI-compatible endpoint (`url` ends in /v1): it is asked to
    score the answer against the expected one from 0 to 1 and answers with a number."""
    endpoint = url.rstrip("/") + "/chat/completions"

    def judge(item: Any, got: Any, want: Any) -> float | None:
        prompt = ("Score how well the ANSWER matches the EXPECTED answer for the INPUT, from "
                  "0 (wrong) to 1 (fully right). Reply with the number only.\n"
                  f"INPUT: {item}\nEXPECTED: {want}\nANSWER: {got}")
        body = orjson.dumps({"model": model, "temperature": 0,
                             "messages": [{"role": "user", "content": prompt}]})
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = orjson.loads(response.read())
        text = answer["choices"][0]["message"]["content"] or ""
        match = _NUMBER.search(text)
        return min(1.0, max(0.0, float(match.group(1)))) if match else None

    return judge
