"""The simulated model: deterministic answers, embeddings and usage, plus fault knobs.

Used in process by the `sim` provider and over HTTP by `shipyard sim`. Output depends only on
the input (and `seed`), so tests can assert on it; faults are drawn from the knobs in `Faults`.
Structured answers come from `sim.schema`, tokens and log probabilities from `sim.tokens`, and
the sizes it refuses from `sim.limits`.
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

import orjson

from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.sim.limits import (
    SimRequestError,
    check_chat,
    check_completion,
    check_embeddings,
    whole,
)
from shipyard.sim.schema import SchemaTooLarge, draw
from shipyard.sim.tokens import chat_logprobs, completion_logprobs, split_tokens

__all__ = ["Faults", "SimModel", "SimRequestError", "parse_latency"]

_PROSE = """
the model considered your request carefully and here is a simulated answer that stays
deterministic so tests can rely on it while still looking like real prose with a few longer
sentences about production readiness latency budgets and traces
"""
_WORDS = _PROSE.split()
_STATUSES = (408, 429, 500, 502, 503, 504)
_FINGERPRINT = "fp_shipyard_sim"


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


@dataclass
class _Choice:
    """One answer of a request, before it is shaped as a response or as stream chunks."""

    index: int
    content: str | None
    finish: str
    salt: str
    structured: bool = False            # JSON content: streamed token by token
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output_text(self) -> str:
        """What counts as completion tokens: the content, or the tool calls' arguments."""
        if self.tool_calls:
            return "".join(c["function"]["name"] + c["function"]["arguments"]
                           for c in self.tool_calls)
        return self.content or ""


def _salt(prompt: str, seed: int | None, index: int) -> str:
    # Choice 0 without a seed keeps the answer the sim always gave for this prompt.
    return prompt if seed is None and index == 0 else f"{prompt}\x00{seed}\x00{index}"


def _rng(salt: str) -> random.Random:
    return random.Random(hashlib.sha256(salt.encode("utf-8", "replace")).digest())


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []


def _cut_at_stop(text: str, stops: list[str]) -> str | None:
    """The text before the first stop sequence, or None when none occurs."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[:min(found)] if found else None


def _cut_tokens(text: str, max_tokens: int | None) -> tuple[str, bool]:
    if max_tokens is None or estimate_text(text) <= max_tokens:
        return (text, False)
    return ("".join(split_tokens(text)[:max_tokens]), True)


def _draw(schema: Any, rng: random.Random, param: str) -> Any:
    try:
        return draw(schema, rng)
    except SchemaTooLarge as exc:
        raise SimRequestError(f"Invalid '{param}': {exc}.", param) from None


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class SimModel:
    """Deterministic fake model.

    Honours `n`, `seed`, `stop`, `max_tokens`/`max_completion_tokens`, `response_format`
    (`json_object`, `json_schema`), `tools`/`tool_choice` and `logprobs`/`top_logprobs`, in
    answers and in streams; `check()` refuses what a real model would (see `sim.limits`).

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

    # -- requests it refuses ----------------------------------------------------------------
    @staticmethod
    def check(route: str, body: dict[str, Any]) -> None:
        """Raise `SimRequestError` (a 400) for a request a real model would refuse: absurd
        sizes (`n`, `max_tokens`, `top_logprobs`, `dimensions`, inputs) and bad options.
        `route` is `chat`, `completions` or `embeddings`."""
        {"chat": check_chat, "completions": check_completion,
         "embeddings": check_embeddings}[route](body)

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
        value = whole(body.get("max_completion_tokens", body.get("max_tokens")))
        return value if value is not None and value > 0 else None

    def _prose(self, salt: str, max_tokens: int | None, stops: list[str]) -> tuple[str, str]:
        text = self.answer_text(salt, None)
        stopped = _cut_at_stop(text, stops)
        if stopped is not None:
            text, finish = stopped, "stop"
        else:
            finish = "stop"
        if max_tokens is not None and estimate_text(text) > max_tokens:
            text = self.answer_text(salt, max_tokens) if stopped is None else \
                _cut_tokens(text, max_tokens)[0]
            finish = "length"
        return (text, finish)

    @staticmethod
    def _tool_to_call(body: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        """The tool this answer calls, if it calls one (as a model would decide)."""
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)
                 and isinstance(t.get("function"), dict)]
        choice = body.get("tool_choice")
        if not tools or choice == "none":
            return None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            return next((t["function"] for t in tools if t["function"].get("name") == name),
                        None)
        if choice != "required":
            # `auto`: call a tool, unless the conversation just got a tool's result back.
            messages = body.get("messages") or []
            last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
            if last.get("role") in ("tool", "function"):
                return None
        return dict(rng.choice(tools)["function"])

    def _chat_choices(self, body: dict[str, Any], text: str | None) -> list[_Choice]:
        n = whole(body.get("n")) or 1
        prompt = self._prompt_of(body)
        seed = whole(body.get("seed"))
        max_tokens = self._max_tokens(body)
        stops = _stops(body)
        given = body.get("response_format")
        fmt: dict[str, Any] = given if isinstance(given, dict) else {}
        choices = []
        for index in range(n):
            salt = _salt(prompt, seed, index)
            if text is not None:  # a scripted reply, as is
                choices.append(_Choice(index, text, "stop", salt))
                continue
            rng = _rng(salt)
            tool = self._tool_to_call(body, rng)
            if tool is not None:
                where = next(f"tools[{i}].function.parameters" for i, t in enumerate(
                    body.get("tools") or []) if (t or {}).get("function", {}).get("name")
                    == tool.get("name"))
                value = _draw(tool.get("parameters") or {"type": "object", "properties": {}},
                              rng, where)
                arguments, cut = _cut_tokens(_json(value), max_tokens)
                named = isinstance(body.get("tool_choice"), dict)
                call = {"id": f"call_{rng.getrandbits(96):024x}", "type": "function",
                        "function": {"name": str(tool.get("name")), "arguments": arguments}}
                finish = "length" if cut else ("stop" if named else "tool_calls")
                choices.append(_Choice(index, None, finish, salt, True, [call]))
                continue
            kind = fmt.get("type")
            if kind in ("json_object", "json_schema"):
                if kind == "json_schema":
                    schema = (fmt.get("json_schema") or {}).get("schema", {})
                    content = _json(_draw(schema, rng, "response_format.json_schema.schema"))
                else:
                    content = _json({"answer": self.answer_text(salt, None)})
                stopped = _cut_at_stop(content, stops)
                content, cut = _cut_tokens(stopped if stopped is not None else content,
                                           max_tokens)
                choices.append(_Choice(index, content, "length" if cut else "stop", salt, True))
                continue
            content, finish = self._prose(salt, max_tokens, stops)
            choices.append(_Choice(index, content, finish, salt))
        return choices

    @staticmethod
    def _logprobs(body: dict[str, Any], choice: _Choice, text: str | None = None,
                  offset: int = 0) -> dict[str, Any] | None:
        if not body.get("logprobs"):
            return None
        if choice.content is None:
            return {"content": None, "refusal": None}
        top = whole(body.get("top_logprobs")) or 0
        tokens = split_tokens(choice.content if text is None else text)
        return {"content": chat_logprobs(tokens, top, choice.salt, offset), "refusal": None}

    def chat(self, body: dict[str, Any], *, omit_usage: bool = False,
             text: str | None = None) -> dict[str, Any]:
        """A chat completion; `text` (a scripted reply) replaces the deterministic answer."""
        choices = self._chat_choices(body, text)
        result: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "sim")),
            "system_fingerprint": _FINGERPRINT,
            "choices": [self._message(body, c) for c in choices],
        }
        if not omit_usage:
            result["usage"] = self._chat_usage(body, choices)
        return result

    def _message(self, body: dict[str, Any], choice: _Choice) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": choice.content,
                                   "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = choice.tool_calls
        return {"index": choice.index, "message": message,
                "logprobs": self._logprobs(body, choice), "finish_reason": choice.finish}

    @staticmethod
    def _chat_usage(body: dict[str, Any], choices: list[_Choice]) -> dict[str, int]:
        prompt_tokens = estimate_chat_prompt(body.get("messages") or [])
        return _usage(prompt_tokens, sum(estimate_text(c.output_text) for c in choices))

    def chat_chunks(
        self, body: dict[str, Any], *, omit_usage: bool = False, text: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield `chat.completion.chunk` objects, ending with a usage chunk when asked for."""
        choices = self._chat_choices(body, text)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": str(body.get("model", "sim")),
            "system_fingerprint": _FINGERPRINT,
        }
        include_usage = bool(_include_usage(body))

        def chunk(index: int, delta: dict[str, Any], finish: str | None,
                  logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
            out = {**base, "choices": [
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ]}
            if include_usage:
                out["usage"] = None
            return out

        for choice in choices:
            i = choice.index
            if choice.tool_calls:
                for position, call in enumerate(choice.tool_calls):
                    function = call["function"]
                    head = {"index": position, "id": call["id"], "type": "function",
                            "function": {"name": function["name"], "arguments": ""}}
                    delta: dict[str, Any] = {"tool_calls": [head]}
                    if position == 0:
                        delta = {"role": "assistant", "content": None, "refusal": None,
                                 **delta}
                    yield chunk(i, delta, None)
                    for piece in split_tokens(function["arguments"]):
                        yield chunk(i, {"tool_calls": [{"index": position, "function": {
                            "arguments": piece}}]}, None)
                yield chunk(i, {}, choice.finish)
                continue
            yield chunk(i, {"role": "assistant", "content": "", "refusal": None}, None)
            content = choice.content or ""
            pieces = split_tokens(content) if choice.structured else [
                w if n == 0 else " " + w for n, w in enumerate(content.split(" "))]
            offset = 0
            for piece in pieces:
                logprobs = self._logprobs(body, choice, piece, offset)
                offset += estimate_text(piece)
                yield chunk(i, {"content": piece}, None, logprobs)
            yield chunk(i, {}, choice.finish)
        if include_usage and not omit_usage:
            yield {**base, "choices": [], "usage": self._chat_usage(body, choices)}

    # -- legacy completions -----------------------------------------------------------------
    def _completion_choices(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        prompt = body.get("prompt")
        prompts: list[str]
        if isinstance(prompt, list) and prompt and not all(whole(p) is not None for p in prompt):
            prompts = [p if isinstance(p, str) else " ".join(map(str, p))
                       if isinstance(p, list) else str(p) for p in prompt]
        else:
            prompts = [self._prompt_of(body)]
        n = whole(body.get("n")) or 1
        seed = whole(body.get("seed"))
        asked = whole(body.get("max_tokens"))
        max_tokens = 16 if asked is None else asked  # OpenAI's default for completions
        stops = _stops(body)
        echo = bool(body.get("echo"))
        top = whole(body.get("logprobs"))
        out = []
        for p, text_prompt in enumerate(prompts):
            for i in range(n):
                salt = _salt(text_prompt, seed, i)
                if max_tokens == 0:
                    text, finish = "", "length"
                else:
                    text, finish = self._prose(salt, max_tokens, stops)
                    text = " " + text
                    text, cut = _cut_tokens(text, max_tokens)
                    finish = "length" if cut else finish
                full = (text_prompt + text) if echo else text
                logprobs = None
                if top is not None:
                    tokens = split_tokens(text_prompt) if echo else []
                    tokens += split_tokens(text)
                    logprobs = completion_logprobs(tokens, top, salt, first_is_prompt=echo)
                out.append({"index": p * n + i, "text": full, "logprobs": logprobs,
                            "finish_reason": finish, "_new": text, "_prompt": text_prompt})
        return out

    def completion(self, body: dict[str, Any], *, omit_usage: bool = False) -> dict[str, Any]:
        choices = self._completion_choices(body)
        result: dict[str, Any] = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": str(body.get("model", "sim")),
            "system_fingerprint": _FINGERPRINT,
            "choices": [{k: v for k, v in c.items() if not k.startswith("_")} for c in choices],
        }
        if not omit_usage:
            result["usage"] = self._completion_usage(choices)
        return result

    @staticmethod
    def _completion_usage(choices: list[dict[str, Any]]) -> dict[str, int]:
        prompts = {c["_prompt"] for c in choices}
        return _usage(sum(estimate_text(p) for p in prompts),
                      sum(estimate_text(c["_new"]) for c in choices))

    def completion_chunks(
        self, body: dict[str, Any], *, omit_usage: bool = False
    ) -> Iterator[dict[str, Any]]:
        choices = self._completion_choices(body)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": str(body.get("model", "sim")),
                "system_fingerprint": _FINGERPRINT}
        for choice in choices:
            text = choice["text"]
            words = text.split(" ")
            logprobs = choice["logprobs"]
            used = 0
            for i, word in enumerate(words):
                last = i == len(words) - 1
                piece = word if i == 0 else " " + word
                part = None
                if logprobs is not None:
                    count = estimate_text(piece)
                    part = {k: v[used:used + count] for k, v in logprobs.items()}
                    used += count
                yield {**base, "choices": [{"index": choice["index"], "text": piece,
                                            "logprobs": part,
                                            "finish_reason": choice["finish_reason"]
                                            if last else None}]}
        if _include_usage(body) and not omit_usage:
            yield {**base, "choices": [], "usage": self._completion_usage(choices)}

    # -- embeddings -------------------------------------------------------------------------
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
            whole(x) is not None for x in inputs)
        items = [inputs] if token_ids or not isinstance(inputs, list) else inputs
        dims = whole(body.get("dimensions"))
        data = []
        tokens = 0
        for i, item in enumerate(items):
            if isinstance(item, str):
                text = item
                tokens += estimate_text(text)
            elif isinstance(item, list):
                text = " ".join(map(str, item))
                tokens += len(item)  # token ids: one token each
            else:
                text = str(item)
                tokens += 1
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


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
