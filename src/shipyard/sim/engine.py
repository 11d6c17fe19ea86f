"""The simulated model: deterministic answers, embeddings and usage, plus fault knobs.

Used in process by the `sim` provider and over HTTP by `shipyard sim`. Output depends only on
the input, so tests can assert on it; faults are drawn from the knobs in `Faults`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from shipyard.observe.tokens import estimate_chat_prompt, estimate_text

__all__ = ["Faults", "SimModel", "parse_latency"]

_PROSE = """
the model considered your request carefully and here is a simulated answer that stays
deterministic so tests can rely on it while still looking like real prose with a few longer
sentences about production readiness latency budgets and traces
"""
_WORDS = _PROSE.split()
_STATUSES = (408, 429, 500, 502, 503, 504)


def parse_latency(spec: str | float | int) -> tuple[str, tuple[float, ...]]:
    """Parse a latency spec: `50` (fixed ms), `uniform:20,80`, `normal:50,10`,
    `lognormal:50,0.5` (median ms, sigma) or `exp:50` (mean ms)."""
    if isinstance(spec, int | float):
        return ("fixed", (float(spec),))
    text = str(spec).strip()
    kind, _, args = text.partition(":")
    if not args:
        try:
            return ("fixed", (float(kind),))
        except ValueError:
            pass
    try:
        values = tuple(float(v) for v in args.split(",")) if args else ()
    except ValueError:
        values = ()
    expected = {"fixed": 1, "uniform": 2, "normal": 2, "lognormal": 2, "exp": 1}
    if kind not in expected or len(values) != expected[kind] or any(v < 0 for v in values):
        raise ValueError(
            f"latency '{spec}' is not understood; use milliseconds like 50, or "
            "uniform:20,80, normal:50,10, lognormal:50,0.5 or exp:50"
        )
    return (kind, values)


def _draw_ms(spec: tuple[str, tuple[float, ...]], rng: random.Random) -> float:
    kind, v = spec
    if kind == "fixed":
        return v[0]
    if kind == "uniform":
        return rng.uniform(v[0], v[1])
    if kind == "normal":
        return max(0.0, rng.gauss(v[0], v[1]))
    if kind == "lognormal":
        return v[0] * math.exp(rng.gauss(0.0, v[1]))
    return rng.expovariate(1.0 / v[0]) if v[0] > 0 else 0.0


@dataclass
class Faults:
    """Fault knobs of the simulated upstream; every rate is a probability per request."""

    latency: str = "0"
    token_delay_ms: float = 0.0
    error_rates: dict[str, float] = field(default_factory=dict)
    hang_rate: float = 0.0
    hang_s: float = 3600.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    cut_rate: float = 0.0
    cut_after_chunks: int = 2
    omit_usage: bool = False
    retry_after_s: float | None = 1.0
    # Scripted chat answers, used in order (one per chat request) before the deterministic
    # ones: e.g. malformed JSON first, then valid JSON, to test schema re-asks.
    replies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        parse_latency(self.latency)
        for name in ("hang_rate", "reset_rate", "malformed_rate", "cut_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"'{name}' is {value}; it must be a probability from 0 to 1")
        total = 0.0
        for status, rate in self.error_rates.items():
            if str(status) not in {str(s) for s in _STATUSES}:
                raise ValueError(
                    f"error_rates has status {status}; use one of "
                    f"{', '.join(map(str, _STATUSES))}"
                )
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"error_rates[{status}] is {rate}; it must be from 0 to 1")
            total += float(rate)
        if total > 1.0:
            raise ValueError(f"error rates add up to {total:g}; their sum must be at most 1")
        if not isinstance(self.replies, list) or not all(
                isinstance(r, str) for r in self.replies):
            raise ValueError("'replies' must be a list of strings (scripted chat answers)")
        if self.token_delay_ms < 0 or self.hang_s < 0 or self.cut_after_chunks < 0:
            raise ValueError("token_delay_ms, hang_s and cut_after_chunks must not be negative")

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update (validated as a whole; unchanged on error)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(
                f"unknown fault knob(s) {sorted(unknown)}; known: {', '.join(sorted(known))}"
            )
        merged = {**asdict(self), **changes}
        merged["error_rates"] = {str(k): float(v) for k, v in merged["error_rates"].items()}
        candidate = Faults(**merged)
        for name in known:
            setattr(self, name, getattr(candidate, name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SimModel:
    """Deterministic fake model.

    >>> SimModel().chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})["object"]
    'chat.completion'
    """

    def __init__(self, *, seed: int | None = None, embedding_dims: int = 64) -> None:
        self.rng = random.Random(seed)
        self.embedding_dims = embedding_dims

    # -- fault draws ------------------------------------------------------------------------
    def draw_fault(self, faults: Faults) -> str | None:
        """Pick at most one fault for a request: 'hang', 'reset', 'malformed', 'cut' or a status."""
        roll = self.rng.random()
        for status, rate in faults.error_rates.items():
            if roll < rate:
                return str(status)
            roll -= rate
        for name in ("hang", "reset", "malformed", "cut"):
            rate = getattr(faults, f"{name}_rate")
            if roll < rate:
                return name
            roll -= rate
        return None

    def latency_s(self, faults: Faults) -> float:
        return _draw_ms(parse_latency(faults.latency), self.rng) / 1000.0

    # -- answers --------------------------------------------------------------------------
    @staticmethod
    def answer_text(prompt: str, max_tokens: int | None) -> str:
        digest = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
        n = 12 + digest[0] % 12
        words = [_WORDS[(digest[i % len(digest)] + i) % len(_WORDS)] for i in range(n)]
        text = " ".join(words).capitalize() + "."
        if max_tokens is None or estimate_text(text) <= max_tokens:
            return text
        # Cut like a real model at max_tokens (counted as usage counts them): whole words
        # while they fit, no final period.
        kept: list[str] = []
        used = 0
        for word in words:
            used += estimate_text(word)
            if used > max_tokens:
                break
            kept.append(word)
        return " ".join(kept or [words[0][:4]]).capitalize()

    @staticmethod
    def _prompt_of(body: dict[str, Any]) -> str:
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    content = message.get("content")
                    return content if isinstance(content, str) else str(content)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            return " ".join(str(p) for p in prompt)
        return str(prompt or "")

    @staticmethod
    def _max_tokens(body: dict[str, Any]) -> int | None:
        value = body.get("max_completion_tokens", body.get("max_tokens"))
        return value if isinstance(value, int) and value > 0 else None

    def _finish(self, text: str, max_tokens: int | None) -> str:
        # A complete answer ends with a period; one cut at max_tokens does not.
        return "stop" if text.endswith(".") else "length"

    def chat(self, body: dict[str, Any], *, omit_usage: bool = False,
             text: str | None = None) -> dict[str, Any]:
        """A chat completion; `text` (a scripted reply) replaces the deterministic answer."""
        max_tokens = self._max_tokens(body)
        finish = "stop" if text is not None else None
        if text is None:
            text = self.answer_text(self._prompt_of(body), max_tokens)
        prompt_tokens = estimate_chat_prompt(body.get("messages") or [])
        completion_tokens = estimate_text(text)
        result: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "sim")),
            "system_fingerprint": "fp_shipyard_sim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish or self._finish(text, max_tokens),
                }
            ],
        }
        if not omit_usage:
            result["usage"] = _usage(prompt_tokens, completion_tokens)
        return result

    def chat_chunks(
        self, body: dict[str, Any], *, omit_usage: bool = False, text: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield `chat.completion.chunk` objects, ending with a usage chunk when asked for."""
        max_tokens = self._max_tokens(body)
        finish = "stop" if text is not None else None
        if text is None:
            text = self.answer_text(self._prompt_of(body), max_tokens)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": str(body.get("model", "sim")),
            "system_fingerprint": "fp_shipyard_sim",
        }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            out = {**base, "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            ]}
            if include_usage:
                out["usage"] = None
            return out

        yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
        for i, word in enumerate(text.split(" ")):
            yield chunk({"content": word if i == 0 else " " + word}, None)
        yield chunk({}, finish or self._finish(text, max_tokens))
        if include_usage and not omit_usage:
            prompt_tokens = estimate_chat_prompt(body.get("messages") or [])
            yield {**base, "choices": [], "usage": _usage(prompt_tokens, estimate_text(text))}

    def completion(self, body: dict[str, Any], *, omit_usage: bool = False) -> dict[str, Any]:
        max_tokens = self._max_tokens(body) or 16
        prompt = self._prompt_of(body)
        text = " " + self.answer_text(prompt, max_tokens)
        result: dict[str, Any] = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": str(body.get("model", "sim")),
            "choices": [
                {"index": 0, "text": text, "logprobs": None,
                 "finish_reason": self._finish(text, max_tokens)}
            ],
        }
        if not omit_usage:
            result["usage"] = _usage(estimate_text(prompt), estimate_text(text))
        return result

    def completion_chunks(
        self, body: dict[str, Any], *, omit_usage: bool = False
    ) -> Iterator[dict[str, Any]]:
        full = self.completion(body, omit_usage=True)
        text = full["choices"][0]["text"]
        base = {k: full[k] for k in ("id", "object", "created", "model")}
        words = text.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            piece = word if i == 0 else " " + word
            yield {**base, "choices": [{"index": 0, "text": piece, "logprobs": None,
                                        "finish_reason": full["choices"][0]["finish_reason"]
                                        if last else None}]}
        if (body.get("stream_options") or {}).get("include_usage") and not omit_usage:
            prompt = self._prompt_of(body)
            yield {**base, "choices": [],
                   "usage": _usage(estimate_text(prompt), estimate_text(text))}

    def embedding_vector(self, text: str, dims: int | None = None) -> list[float]:
        dims = dims or self.embedding_dims
        values: list[float] = []
        counter = 0
        while len(values) < dims:
            block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
            values.extend(v / 2**31 for v in struct.unpack(">8i", block))
            counter += 1
        values = values[:dims]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return [v / norm for v in values]

    def embeddings(self, body: dict[str, Any], *, omit_usage: bool = False) -> dict[str, Any]:
        inputs = body.get("input")
        token_ids = isinstance(inputs, list) and bool(inputs) and all(
            isinstance(x, int) for x in inputs)
        items = [inputs] if token_ids or not isinstance(inputs, list) else inputs
        dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else None
        data = []
        tokens = 0
        for i, item in enumerate(items):
            if isinstance(item, str):
                text = item
            elif isinstance(item, list):
                text = " ".join(map(str, item))
            else:
                text = str(item)  # one token id of a flat list
            tokens += estimate_text(text)
            vector = self.embedding_vector(text, dims)
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        result: dict[str, Any] = {"object": "list", "data": data,
                                  "model": str(body.get("model", "sim-embed"))}
        if not omit_usage:
            result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return result


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
