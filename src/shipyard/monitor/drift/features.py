"""Drift features from gateway traces: one value per trace and feature, read from the store.

Built-in features (column name → kind):

| column | kind | from |
|---|---|---|
| `prompt_length` | numeric | characters of the prompt (capture=full) |
| `language` | categorical | script/stop-word heuristic on the prompt (capture=full) |
| `output_length` | numeric | characters of the answer (capture=full) |
| `refusal` | categorical | the answer looks like a refusal ("I can't help with that") |
| `finish_reason` | categorical | `traces.finish_reason` |
| `status` | categorical | HTTP status |
| `latency_ms` | numeric | `traces.total_ms` |
| `prompt_tokens`, `completion_tokens` | numeric | token counts |
| `input.<field>` | inferred | top-level scalar fields of a python service's request body |

More sources plug in as `ColumnSource` functions (for example feedback scores keyed by trace
id): each takes the engine and the trace ids of a window and returns extra columns.

>>> detect_language("Bonjour, je voudrais réserver une table pour ce soir")
'fr'
>>> looks_like_refusal("I'm sorry, but I can't help with that request.")
True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, or_, select

from shipyard.monitor.drift.profiles import ColumnKind
from shipyard.security.crypto import PREFIX
from shipyard.store.tables import traces

__all__ = [
    "BUILTIN_FEATURES",
    "ColumnSource",
    "TraceWindow",
    "detect_language",
    "load_features",
    "looks_like_refusal",
]

BUILTIN_FEATURES: dict[str, ColumnKind] = {
    "prompt_length": "numeric",
    "language": "categorical",
    "output_length": "numeric",
    "refusal": "categorical",
    "finish_reason": "categorical",
    "status": "categorical",
    "latency_ms": "numeric",
    "prompt_tokens": "numeric",
    "completion_tokens": "numeric",
}

# Extra columns for a window: (engine, trace ids) -> {column: values aligned with the ids}.
ColumnSource = Callable[[Engine, Sequence[str]], Mapping[str, Sequence[Any]]]

_REFUSAL = re.compile(
    r"\b(i\s*(?:am|'m)\s+(?:sorry|unable|not able)|i\s+(?:cannot|can't|can not|won't)\s+"
    r"(?:help|assist|provide|comply|do that)|as an ai(?: language model)?|i must decline)\b",
    re.IGNORECASE,
)
_STOPWORDS = {
    "en": {"the", "and", "is", "to", "of", "you", "what", "how", "please", "with", "for"},
    "fr": {"le", "la", "les", "et", "est", "je", "vous", "pour", "une", "des", "que"},
    "de": {"der", "die", "das", "und", "ist", "ich", "sie", "nicht", "mit", "ein", "eine"},
    "es": {"el", "los", "las", "y", "es", "que", "por", "para", "una", "con", "como"},
    "it": {"il", "gli", "che", "di", "per", "una", "sono", "con", "non", "come", "della"},
    "pt": {"o", "os", "as", "que", "para", "com", "uma", "não", "por", "como", "você"},
    "nl": {"de", "het", "een", "en", "is", "van", "ik", "niet", "met", "voor", "dat"},
}
_SCRIPTS = [
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
]
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def detect_language(text: str) -> str:
    """A cheap offline guess: Unicode script first, then stop words; "und" when unsure."""
    sample = text[:2000]
    for code, pattern in _SCRIPTS:
        if len(pattern.findall(sample)) >= 2:
            return "ja" if code == "zh" and _SCRIPTS[1][1].search(sample) else code
    words = [w.lower() for w in _WORD.findall(sample)]
    if not words:
        return "und"
    scores = {code: sum(w in stop for w in words) for code, stop in _STOPWORDS.items()}
    best = max(scores, key=lambda code: scores[code])
    return best if scores[best] > 0 else "und"


def looks_like_refusal(text: str) -> bool:
    """True when the answer reads like a refusal."""
    return bool(_REFUSAL.search(text[:1000]))


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in value if isinstance(p, dict))
    return ""


def prompt_text(body: Any) -> str | None:
    """The user's text in an OpenAI-style request body (or None when there is none)."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("messages"), list):
        parts = [_content(m.get("content")) for m in body["messages"]
                 if isinstance(m, dict) and m.get("role") == "user"]
        return "\n".join(parts)
    prompt = body.get("prompt") or body.get("input")
    return prompt if isinstance(prompt, str) else None


def output_text(raw: str | None) -> str | None:
    """The answer's text: a chat completion's message, or the streamed text as stored."""
    if raw is None:
        return None
    data = _json(raw)
    if isinstance(data, dict) and isinstance(data.get("choices"), list) and data["choices"]:
        choice = data["choices"][0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            return _content(message.get("content"))
        return str(choice.get("text", "")) if isinstance(choice, dict) else None
    return raw if data is None or isinstance(data, str) else orjson.dumps(data).decode()


@dataclass(frozen=True, kw_only=True)
class TraceWindow:
    """Which traces make a window: a time range, optionally one service and one tenant."""

    start: datetime
    end: datetime
    service: str | None = None
    tenant_id: str | None = None


def _rows(engine: Engine, window: TraceWindow, limit: int | None) -> Iterable[Any]:
    query = select(
        traces.c.id, traces.c.route, traces.c.status, traces.c.finish_reason,
        traces.c.total_ms, traces.c.prompt_tokens, traces.c.completion_tokens,
        traces.c.request_body, traces.c.response_body,
    ).where(traces.c.started_at >= window.start, traces.c.started_at < window.end)
    if window.service is not None:
        query = query.where(or_(traces.c.service == window.service,
                                traces.c.model_alias == window.service))
    if window.tenant_id is not None:
        query = query.where(traces.c.tenant_id == window.tenant_id)
    query = query.order_by(traces.c.started_at.desc())
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as connection:
        yield from connection.execution_options(stream_results=True, yield_per=2000).execute(
            query)


def load_features(
    engine: Engine,
    window: TraceWindow,
    *,
    columns: Sequence[str] | None = None,
    sources: Sequence[ColumnSource] = (),
    decrypt: Callable[[str], str | None] | None = None,
    limit: int | None = None,
) -> tuple[dict[str, list[Any]], dict[str, ColumnKind]]:
    """Feature columns of the traces in `window`, and the kinds of the built-in ones.

    `decrypt` turns a stored (encrypted) payload back into text; without it encrypted payloads
    count as missing. `limit` keeps the newest traces only.
    """
    data: dict[str, list[Any]] = {name: [] for name in BUILTIN_FEATURES}
    inputs: dict[str, list[Any]] = {}
    ids: list[str] = []
    for row in _rows(engine, window, limit):
        index = len(ids)
        ids.append(row.id)
        request = _readable(row.request_body, decrypt)
        response = _readable(row.response_body, decrypt)
        body = _json(request)
        prompt = prompt_text(body) if row.route != "invoke" else None
        answer = output_text(response) if row.route != "invoke" else None
        data["prompt_length"].append(len(prompt) if prompt is not None else None)
        data["language"].append(detect_language(prompt) if prompt else None)
        data["output_length"].append(len(answer) if answer is not None else None)
        data["refusal"].append(looks_like_refusal(answer) if answer is not None else None)
        data["finish_reason"].append(row.finish_reason)
        data["status"].append(int(row.status))
        data["latency_ms"].append(float(row.total_ms))
        data["prompt_tokens"].append(row.prompt_tokens)
        data["completion_tokens"].append(row.completion_tokens)
        if row.route == "invoke" and isinstance(body, dict):
            for key, value in body.items():
                if isinstance(value, str | int | float | bool):
                    inputs.setdefault(f"input.{key}", [None] * index).append(value)
        for values in inputs.values():
            if len(values) < index + 1:
                values.append(None)
    data.update(inputs)
    for source in sources:
        for name, extra in source(engine, ids).items():
            data[name] = list(extra)
    if columns is not None:
        missing = [c for c in columns if c not in data]
        data = {c: data.get(c, [None] * len(ids)) for c in columns}
        for name in missing:
            data[name] = [None] * len(ids)
    return data, {k: v for k, v in BUILTIN_FEATURES.items() if k in data}


def _readable(value: str | None, decrypt: Callable[[str], str | None] | None) -> str | None:
    if value is None:
        return None
    if decrypt is not None:
        return decrypt(value)
    return None if value.startswith(PREFIX) else value
