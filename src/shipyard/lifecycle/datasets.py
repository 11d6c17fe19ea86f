"""Evaluation datasets: from a file (JSONL, CSV, Parquet), from labelled feedback, from
reviewed escalations, or sampled from traces.

A dataset is either *tabular* (a feature matrix and labels: a classifier's rows) or *text*
(inputs and expected answers: a function's cases). A file is tabular when it has a
`features` column (a list per row) or when feature columns are named (`--features a,b,c`);
otherwise each row's `input` is sent as it is and `expected` is what a good answer matches.

>>> data = from_file(Path("holdout.parquet"), label="label", features=["f0", "f1"])
... # doctest: +SKIP
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, select

from shipyard.errors import InvalidRequest
from shipyard.store.tables import feedback, traces

__all__ = ["EvalDataset", "from_escalations", "from_feedback", "from_file", "from_traces",
           "read_table"]


@dataclass
class EvalDataset:
    """Rows to evaluate on: `x`/`y` for a classifier, `inputs`/`expected` for text."""

    name: str
    kind: str  # tabular | text
    x: Any = None  # a 2-D numpy array (tabular)
    y: list[Any] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)
    expected: list[Any] = field(default_factory=list)
    context: list[list[str] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y) if self.kind == "tabular" else len(self.inputs)


def read_table(path: Path) -> Any:
    """A file as a pyarrow Table (CSV, JSONL or Parquet by its suffix)."""
    try:
        import pyarrow.csv as pcsv
        import pyarrow.json as pjson
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InvalidRequest(f"Reading '{path}' needs pyarrow ({exc}); install it with "
                             "pip install 'shipyard[data]'.") from None
    if not path.is_file():
        raise InvalidRequest(f"The dataset '{path}' does not exist; give a JSONL, CSV or "
                             "Parquet file.", param="dataset")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pq.read_table(path)
    if suffix == ".csv":
        return pcsv.read_csv(path)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return pjson.read_json(path)
    raise InvalidRequest(f"The dataset '{path}' has suffix '{suffix}'; use .jsonl, .csv or "
                         ".parquet.", param="dataset")


def _tabular(name: str, rows_x: Any, y: list[Any]) -> EvalDataset:
    import numpy as np

    return EvalDataset(name, "tabular", x=np.asarray(rows_x, dtype=np.float64), y=y)


def from_file(path: Path, *, label: str = "label", features: list[str] | None = None,
              input_column: str = "input", expected_column: str = "expected",
              limit: int | None = None) -> EvalDataset:
    import numpy as np

    table = read_table(path)
    if limit is not None:
        table = table.slice(0, limit)
    names = table.column_names
    if features or "features" in names:
        if label not in names:
            raise InvalidRequest(f"The dataset '{path}' has no label column '{label}' (it has "
                                 f"{', '.join(names)}); name it with --label.", param="label")
        if features:
            missing = [f for f in features if f not in names]
            if missing:
                raise InvalidRequest(f"The dataset '{path}' has no column(s) "
                                     f"{', '.join(missing)}; it has {', '.join(names)}.",
                                     param="features")
            x = np.column_stack([table.column(f).to_numpy(zero_copy_only=False)
                                 for f in features]).astype(np.float64)
        else:
            x = np.asarray(table.column("features").to_pylist(), dtype=np.float64)
        y = table.column(label).to_pylist()
        return EvalDataset(str(path), "tabular", x=x, y=y)
    if input_column not in names or expected_column not in names:
        raise InvalidRequest(
            f"The dataset '{path}' has columns {', '.join(names)}; a text dataset needs "
            f"'{input_column}' and '{expected_column}' (or a 'features' column, or "
            "--features a,b,c, for a classifier).", param="dataset")
    inputs = table.column(input_column).to_pylist()
    expected = table.column(expected_column).to_pylist()
    context = (table.column("context").to_pylist() if "context" in names
               else [None] * len(inputs))
    return EvalDataset(str(path), "text", inputs=inputs, expected=expected, context=context)


def _features(value: Any) -> list[float] | None:
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if isinstance(value, dict):
        features = value.get("features")
        if isinstance(features, list) and features and not isinstance(features[0], list):
            return [float(v) for v in features]
    return None


def _label(value: Any) -> Any:
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                continue
    return value


def from_feedback(engine: Engine, service: str, *, since: datetime | None = None,
                  decrypt: Any = None) -> EvalDataset:
    """Labelled feedback of `service` with the inputs its traces captured
    (`capture: full`): tabular when the inputs are `features`, else text."""
    query = (select(feedback.c.label, traces.c.request_body)
             .select_from(feedback.join(traces, traces.c.id == feedback.c.trace_id))
             .where(feedback.c.service == service, feedback.c.label.is_not(None))
             .order_by(feedback.c.created_at))
    if since is not None:
        query = query.where(feedback.c.created_at >= since)
    xs, ys, inputs, expected = [], [], [], []
    with engine.connect() as connection:
        for label, body in connection.execute(query):
            text = decrypt(body) if decrypt is not None and body else body
            if not text:
                continue
            row = _features(text)
            if row is not None:
                xs.append(row)
                ys.append(_label(label))
            else:
                inputs.append(orjson.loads(text) if text[:1] in "{[" else text)
                expected.append(label)
    if xs:
        return _tabular(f"feedback:{service}", xs, ys)
    if not inputs:
        raise InvalidRequest(f"'{service}' has no labelled feedback with captured inputs; "
                             "give feedback with a label on traces of a `capture: full` "
                             "service.", param="from_feedback")
    return EvalDataset(f"feedback:{service}", "text", inputs=inputs, expected=expected,
                       context=[None] * len(inputs))


def from_escalations(engine: Engine, service: str) -> EvalDataset:
    """Reviewed escalations of `service`: the reviewer's answer is the expected output."""
    from shipyard.escalation.store import iter_feedback

    xs, ys, inputs, expected = [], [], [], []
    for row in iter_feedback(engine):
        if row.get("service") != service:
            continue
        conversation = row.get("conversation")
        found = None
        for item in conversation if isinstance(conversation, list) else [conversation]:
            content = item.get("content") if isinstance(item, dict) else item
            found = _features(content) if found is None else found
        if found is not None:
            xs.append(found)
            ys.append(_label(row.get("answer")))
        else:
            user = [m.get("content") for m in conversation or []
                    if isinstance(m, dict) and m.get("role") == "user"]
            inputs.append(user[-1] if user else conversation)
            expected.append(row.get("answer"))
    if xs:
        return _tabular(f"escalations:{service}", xs, ys)
    if not inputs:
        raise InvalidRequest(f"'{service}' has no reviewed escalations yet.",
                             param="from_escalations")
    return EvalDataset(f"escalations:{service}", "text", inputs=inputs, expected=expected,
                       context=[None] * len(inputs))


def from_traces(engine: Engine, service: str, *, sample: int, since: datetime | None = None,
                seed: int = 0, decrypt: Any = None) -> EvalDataset:
    """A random sample of `service`'s captured requests; what the version that served
    them answered is the expected output (a candidate is scored on agreeing with it)."""
    query = select(traces.c.request_body, traces.c.response_body).where(
        traces.c.service == service, traces.c.route == "invoke", traces.c.status == 200,
        traces.c.request_body.is_not(None), traces.c.response_body.is_not(None))
    if since is not None:
        query = query.where(traces.c.started_at >= since)
    with engine.connect() as connection:
        rows = list(connection.execute(query.limit(max(sample * 20, 1000))).all())
    random.Random(seed).shuffle(rows)
    inputs, expected = [], []
    for request, response in rows[:sample]:
        request = decrypt(request) if decrypt is not None else request
        response = decrypt(response) if decrypt is not None else response
        try:
            inputs.append(orjson.loads(request))
            answer = orjson.loads(response)
        except orjson.JSONDecodeError:
            continue
        expected.append(answer.get("output") if isinstance(answer, dict) and "output" in answer
                        else answer)
    if not inputs:
        raise InvalidRequest(f"'{service}' has no captured traces to sample; set its "
                             "`capture: full` and let it serve first.", param="from_traces")
    return EvalDataset(f"traces:{service}", "text", inputs=inputs, expected=expected,
                       context=[None] * len(inputs))
