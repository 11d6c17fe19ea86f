"""OpenAI requests answered by a GGUF model through llama-cpp-python.

Only the worker process imports this module (and with it llama.cpp): see `worker.py` for why
the model runs in a process of its own. `LocalModel.run()` turns one request into events:
`("chunk", {...})` for streams, `("result", {...})` for whole answers, both in OpenAI's shape.

Generation is one loop over `Llama.generate()`: the prompt comes from the model's own chat
template, `response_format` and forced tool calls become llama.cpp grammars, stop sequences are
held back from a stream until they can no longer match, and log probabilities are read from the
model's logits at each step (the log-softmax before grammar, penalties and temperature).
Token counts are the model's own, in streams too.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import math
import os
import random
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import llama_cpp
import llama_cpp.llama_cpp as llama_low
import numpy as np
from llama_cpp import llama as llama_module
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import (
    JSON_GBNF,
    LlamaGrammar,
)

from shipyard.providers.local.chat import (
    TOOL_CALL_OPEN,
    call_schema,
    forced_tool,
    parse_tool_calls,
    template_messages,
    tool_call,
    tools_instruction,
)
from shipyard.providers.local.grammars import schema_to_gbnf

__all__ = ["MAX_CHOICES", "Event", "LocalModel", "LocalRequestError", "Settings", "model_params"]

Event = tuple[str, dict[str, Any]]
# Used when a GGUF file carries no chat template of its own.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 16


class LocalRequestError(Exception):
    """A request this model cannot answer as asked (sent to the client as a 400)."""

    def __init__(self, message: str, param: str | None = None,
                 code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Settings:
    """What a worker needs to load its model (sent by the gateway as JSON)."""

    provider: str
    model_path: str
    context_tokens: int = 2048
    threads: int | None = None
    chat_template: str | None = None
    cpu_repack: bool = False

    @property
    def key(self) -> str:
        return f"providers.{self.provider}"


@contextlib.contextmanager
def model_params(*, extra_buffers: bool) -> Iterator[None]:
    """`Llama()` does not expose `use_extra_bufts`; set it in the defaults while loading.

    llama.cpp's extra CPU buffer types repack weights for its AMX kernels, and the AMX int8
    matrix multiply crashes (SIGSEGV) on some virtual machines whose CPUs report AMX.
    """
    name = "llama_model_default_params"
    original = getattr(llama_low, name)

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = extra_buffers
        return params

    setattr(llama_low, name, defaults)  # the module `Llama()` reads it from
    try:
        yield
    finally:
        setattr(llama_low, name, original)


@dataclass
class _Generation:
    """What one answer produced, filled in while it streams."""

    text: str = ""
    tokens: int = 0
    finish: str = "length"
    logprobs: list[dict[str, Any]] = field(default_factory=list)


class _Recorder:
    """A logits processor that keeps the log-softmax of the step's logits (for logprobs)."""

    def __init__(self) -> None:
        self.last: np.ndarray[Any, Any] | None = None

    def __call__(self, input_ids: Any, scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        shifted = scores - scores.max()
        self.last = shifted - np.log(np.exp(shifted).sum())
        return scores


class LocalModel:
    """One loaded GGUF model answering OpenAI-shaped requests, one at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = Path(settings.model_path).name
        self.llm = self._load(embedding=False)
        self._embedder: llama_cpp.Llama | None = None
        model = self.llm._model
        eos, bos = model.token_eos(), model.token_bos()
        template = settings.chat_template or self.llm.metadata.get("tokenizer.chat_template")
        self.template_source = ("config" if settings.chat_template else
                                "gguf" if template else "chatml (the file has none)")
        template = template or CHATML
        self.native_tools = "tools" in template
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "")
        self._grammars: OrderedDict[str, LlamaGrammar] = OrderedDict()
        self._vocab = model.vocab
        self._pieces: dict[int, bytes] = {}

    def _load(self, *, embedding: bool) -> llama_cpp.Llama:
        s = self.settings
        options: dict[str, Any] = {"model_path": s.model_path, "n_ctx": s.context_tokens,
                                   "verbose": False, "embedding": embedding}
        if s.threads is not None:
            options.update(n_threads=s.threads, n_threads_batch=s.threads)
        if embedding:
            # One input is one batch; mean pooling turns a decoder into a text embedder.
            options.update(n_batch=s.context_tokens, n_ubatch=s.context_tokens,
                           pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        with model_params(extra_buffers=s.cpu_repack):
            return llama_cpp.Llama(**options)

    def info(self) -> dict[str, Any]:
        return {"model": self.name, "path": self.settings.model_path,
                "context_tokens": self.llm.n_ctx(), "chat_template": self.template_source,
                "native_tools": self.native_tools, "pid": os.getpid()}

    # -- the request entry point ------------------------------------------------------------
    def run(self, endpoint: str, body: dict[str, Any], stream: bool,
            cancelled: Callable[[], bool]) -> Iterator[Event]:
        """Answer one request; raises LocalRequestError for a request it refuses."""
        if endpoint == "chat/completions":
            return self._chat(body, stream, cancelled)
        if endpoint == "completions":
            return self._completion(body, stream, cancelled)
        if endpoint == "embeddings":
            return iter([("result", self._embeddings(body))])
        raise LocalRequestError(f"The local model does not serve '{endpoint}'.")

    # -- shared pieces ----------------------------------------------------------------------
    def _grammar(self, key: str, make: Callable[[], LlamaGrammar]) -> LlamaGrammar:
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = make()
            self._grammars[key] = grammar
            if len(self._grammars) > 64:
                self._grammars.popitem(last=False)
        self._grammars.move_to_end(key)
        return grammar

    def _schema_grammar(self, schema: Any, param: str) -> LlamaGrammar:
        text = json.dumps(schema, sort_keys=True)
        try:
            return self._grammar(text, lambda: LlamaGrammar.from_string(schema_to_gbnf(text),
                                                                        verbose=False))
        except Exception as exc:
            raise LocalRequestError(
                f"'{param}' cannot be turned into a grammar for the local model "
                f"({type(exc).__name__}: {str(exc)[:200]}); simplify the schema.", param) from None

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self.llm.detokenize([token])
            self._pieces[token] = piece
        return piece

    def _tokens(self, text: str, *, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def _check_context(self, prompt: list[int], param: str) -> None:
        limit = self.llm.n_ctx()
        if len(prompt) >= limit:
            raise LocalRequestError(
                f"This model's maximum context length is {limit} tokens, however the request "
                f"has {len(prompt)} prompt tokens; shorten '{param}' or raise "
                f"{self.settings.key}.context_tokens.", param, "context_length_exceeded")

    @staticmethod
    def _sampling(body: dict[str, Any]) -> dict[str, Any]:
        def number(name: str, default: float) -> float:
            value = body.get(name)
            return float(value) if isinstance(value, int | float) and not isinstance(
                value, bool) else default

        return {"temp": number("temperature", 1.0), "top_p": number("top_p", 1.0),
                "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0,
                "frequency_penalty": number("frequency_penalty", 0.0),
                "presence_penalty": number("presence_penalty", 0.0)}

    def _choices(self, body: dict[str, Any]) -> int:
        n = self._whole(body, "n") or 1
        if not 1 <= n <= MAX_CHOICES:
            raise LocalRequestError(f"'n' is {n}; a local model generates 1 to {MAX_CHOICES} "
                                    "choices per request (each one is a full generation).", "n")
        return n

    @staticmethod
    def _stops(body: dict[str, Any]) -> list[str]:
        stop = body.get("stop")
        if isinstance(stop, str):
            return [stop] if stop else []
        return [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []

    @staticmethod
    def _whole(body: dict[str, Any], *names: str) -> int | None:
        for name in names:
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and float(
                    value).is_integer():
                return int(value)
        return None

    def _logit_bias(self, body: dict[str, Any]) -> Callable[..., Any] | None:
        bias = body.get("logit_bias")
        if not isinstance(bias, dict) or not bias:
            return None
        try:
            table = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise LocalRequestError("'logit_bias' maps token ids to numbers from -100 to 100.",
                                    "logit_bias") from None
        vocab = self.llm.n_vocab()
        bad = [k for k in table if not 0 <= k < vocab]
        if bad:
            raise LocalRequestError(f"'logit_bias' names token id {bad[0]}, but this model's "
                                    f"vocabulary has ids 0 to {vocab - 1}.", "logit_bias")
        ids = np.array(list(table), dtype=np.intc)
        values = np.array(list(table.values()), dtype=np.single)

        def apply(input_ids: Any, scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            scores = np.copy(scores)
            scores[ids] += values
            return scores

        return apply

    # -- the generation loop ----------------------------------------------------------------
    def _generate(self, prompt: list[int], body: dict[str, Any], *, max_tokens: int | None,
                  stops: list[str], grammar: LlamaGrammar | None, top_logprobs: int | None,
                  seed: int | None, cancelled: Callable[[], bool], result: _Generation,
                  ) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Yield (text, logprob entries) as text becomes safe to send; fills `result`."""
        limit = self.llm.n_ctx() - len(prompt)
        budget = limit if max_tokens is None else min(max_tokens, limit)
        recorder = _Recorder() if top_logprobs is not None else None
        processors = [p for p in (recorder, self._logit_bias(body)) if p is not None]
        self.llm.set_seed(seed if seed is not None else random.randrange(2**31))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        longest_stop = max((len(s) for s in stops), default=0)
        text = ""
        sent = 0
        pending: list[dict[str, Any]] = []
        stopped = False  # by a stop sequence: what followed it is dropped
        result.finish = "length"
        if budget <= 0:
            return
        for token in self.llm.generate(
                prompt, grammar=grammar, reset=True,
                logits_processor=llama_module.LogitsProcessorList(processors) if processors
                else None, **self._sampling(body)):
            if cancelled():
                result.finish = "cancelled"
                break
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                result.finish = "stop"
                break
            result.tokens += 1
            piece = self._piece(token)
            text += decoder.decode(piece)
            if recorder is not None and recorder.last is not None:
                pending.append(self._logprob_entry(token, piece, recorder.last, top_logprobs))
            if stops:
                hit = _first_stop(text, stops, max(0, sent - longest_stop))
                if hit is not None:
                    text = text[:hit]
                    result.finish = "stop"
                    stopped = True
                    break
            if result.tokens >= budget:
                break
            safe = len(text) - _held_back(text, stops)
            if safe > sent:
                yield (text[sent:safe], pending)
                pending = []
                sent = safe
        if not stopped:
            text += decoder.decode(b"", final=True)
        if len(text) > sent or pending:
            yield (text[sent:], pending)
        result.text = text

    def _logprob_entry(self, token: int, piece: bytes, logprobs: np.ndarray[Any, Any],
                       top: int | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"token": piece.decode("utf-8", "replace"),
                                 "logprob": float(logprobs[token]), "bytes": list(piece)}
        alternatives: list[dict[str, Any]] = []
        if top:
            best = np.argpartition(logprobs, -top)[-top:]
            for other in sorted(best.tolist(), key=lambda t: -float(logprobs[t])):
                other_piece = self._piece(int(other))
                alternatives.append({"token": other_piece.decode("utf-8", "replace"),
                                     "logprob": float(logprobs[other]),
                                     "bytes": list(other_piece)})
        entry["top_logprobs"] = alternatives
        return entry

    # -- chat -------------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any], stream: bool,
              cancelled: Callable[[], bool]) -> Iterator[Event]:
        mode, named = forced_tool(body)
        tools = body.get("tools") or []
        instruction = None if mode == "none" or self.native_tools else tools_instruction(tools)
        messages = template_messages(body.get("messages") or [], native_tools=self.native_tools,
                                     instruction=instruction)
        try:
            rendered = self.formatter(messages=cast(Any, messages),
                                      tools=tools if self.native_tools and mode != "none"
                                      else None)
        except Exception as exc:
            raise LocalRequestError(
                f"The model's chat template cannot render these messages ({type(exc).__name__}: "
                f"{str(exc)[:200]}); check 'messages' or set {self.settings.key}.chat_template.",
                "messages") from None
        prompt = self._tokens(rendered.prompt, special=True)
        self._check_context(prompt, "messages")
        grammar = None
        given = body.get("response_format")
        fmt: dict[str, Any] = given if isinstance(given, dict) else {}
        if mode == "named" and named is not None:
            grammar = self._schema_grammar(named.get("parameters") or {
                "type": "object", "properties": {}}, "tool_choice")
        elif mode == "required":
            grammar = self._schema_grammar(call_schema(tools), "tools")
        elif fmt.get("type") == "json_object":
            grammar = self._grammar("json_object", lambda: LlamaGrammar.from_string(
                JSON_GBNF, verbose=False))
        elif fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
            grammar = self._schema_grammar(schema, "response_format.json_schema.schema")
        plan = _ChatPlan(
            prompt=prompt, grammar=grammar, mode=mode, named=named, tools=tools,
            stops=self._stops(body) + ([rendered.stop] if isinstance(rendered.stop, str)
                                       else list(rendered.stop or [])),
            max_tokens=self._whole(body, "max_completion_tokens", "max_tokens"),
            top_logprobs=(self._whole(body, "top_logprobs") or 0) if body.get("logprobs")
            else None,
            seed=self._whole(body, "seed"), n=self._choices(body))
        if plan.top_logprobs is not None and plan.top_logprobs > _MAX_TOP_LOGPROBS:
            raise LocalRequestError(f"'top_logprobs' is {plan.top_logprobs}; the maximum is "
                                    f"{_MAX_TOP_LOGPROBS}.", "top_logprobs")
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": str(body.get("model") or self.name),
                "system_fingerprint": f"fp_local_{self.name[:24]}"}
        if stream:
            return self._chat_stream(body, plan, base, cancelled)
        return iter([("result", self._chat_whole(body, plan, base, cancelled))])

    def _chat_whole(self, body: dict[str, Any], plan: _ChatPlan, base: dict[str, Any],
                    cancelled: Callable[[], bool]) -> dict[str, Any]:
        choices = []
        completion_tokens = 0
        for index in range(plan.n):
            result = _Generation()
            for _, entries in self._generate(
                    plan.prompt, body, max_tokens=plan.max_tokens, stops=plan.stops,
                    grammar=plan.grammar, top_logprobs=plan.top_logprobs,
                    seed=plan.seed_for(index), cancelled=cancelled, result=result):
                result.logprobs.extend(entries)
            completion_tokens += result.tokens
            content, calls, finish = plan.shape(result)
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            logprobs = {"content": result.logprobs, "refusal": None} \
                if plan.top_logprobs is not None else None
            choices.append({"index": index, "message": message, "logprobs": logprobs,
                            "finish_reason": finish})
        return {**base, "object": "chat.completion", "choices": choices,
                "usage": _usage(len(plan.prompt), completion_tokens)}

    def _chat_stream(self, body: dict[str, Any], plan: _ChatPlan, base: dict[str, Any],
                     cancelled: Callable[[], bool]) -> Iterator[Event]:
        base = {**base, "object": "chat.completion.chunk"}

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
                  logprobs: list[dict[str, Any]] | None = None) -> Event:
            lp = {"content": logprobs, "refusal": None} if logprobs is not None else None
            return ("chunk", {**base, "choices": [{"index": index, "delta": delta,
                                                    "logprobs": lp, "finish_reason": finish}]})

        completion_tokens = 0
        for index in range(plan.n):
            result = _Generation()
            # Text streams as it comes unless it may be a tool call: a forced call is sent
            # whole at the end, an `auto` answer is held while it could open <tool_call>.
            holding = plan.mode in ("required", "named")
            held: list[tuple[str, list[dict[str, Any]]]] = []
            started = False
            # The role goes first, as OpenAI sends it; an `auto` answer's role waits until it
            # is known to be text (content "") or a tool call (content null).
            announced = plan.mode != "auto"
            if announced:
                yield chunk(index, {"role": "assistant", "content": None if holding else "",
                                    "refusal": None})
            for text, entries in self._generate(
                    plan.prompt, body, max_tokens=plan.max_tokens, stops=plan.stops,
                    grammar=plan.grammar, top_logprobs=plan.top_logprobs,
                    seed=plan.seed_for(index), cancelled=cancelled, result=result):
                result.logprobs.extend(entries)
                if holding or (plan.mode == "auto" and not started):
                    held.append((text, entries))
                    so_far = "".join(t for t, _ in held).lstrip()
                    if plan.mode == "auto" and not (TOOL_CALL_OPEN.startswith(so_far)
                                                    or so_far.startswith(TOOL_CALL_OPEN)):
                        started = announced = True  # plain text: send what was held, stream
                        yield chunk(index, {"role": "assistant", "content": "",
                                            "refusal": None})
                        for t, e in held:
                            yield chunk(index, {"content": t}, None,
                                        e if plan.top_logprobs is not None else None)
                        held = []
                    continue
                yield chunk(index, {"content": text}, None,
                            entries if plan.top_logprobs is not None else None)
            completion_tokens += result.tokens
            content, calls, finish = plan.shape(result)
            if not announced:
                yield chunk(index, {"role": "assistant", "content": None if calls else "",
                                    "refusal": None})
            if calls:
                if content:
                    yield chunk(index, {"content": content})
                for position, call in enumerate(calls):
                    yield chunk(index, {"tool_calls": [{
                        "index": position, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}]})
                    yield chunk(index, {"tool_calls": [{"index": position, "function": {
                        "arguments": call["function"]["arguments"]}}]})
            elif held:
                for t, e in held:
                    yield chunk(index, {"content": t}, None,
                                e if plan.top_logprobs is not None else None)
            yield chunk(index, {}, finish)
            if result.finish == "cancelled":
                return
        if (body.get("stream_options") or {}).get("include_usage"):
            yield ("chunk", {**base, "choices": [],
                             "usage": _usage(len(plan.prompt), completion_tokens)})

    # -- legacy completions -----------------------------------------------------------------
    def _completion(self, body: dict[str, Any], stream: bool,
                    cancelled: Callable[[], bool]) -> Iterator[Event]:
        if body.get("suffix"):
            raise LocalRequestError("'suffix' (inserting text) is not supported by local "
                                    "models; leave it out.", "suffix")
        if (self._whole(body, "best_of") or 1) > 1:
            raise LocalRequestError("'best_of' is not supported by local models; use 'n'.",
                                    "best_of")
        prompts = _prompts(body.get("prompt"), self)
        echo = bool(body.get("echo"))
        top = self._whole(body, "logprobs")
        if top is not None and echo:
            raise LocalRequestError("'echo' with 'logprobs' (scoring the prompt) is not "
                                    "supported by local models.", "echo")
        if top is not None and top > 5:
            raise LocalRequestError(f"'logprobs' is {top}; the maximum is 5.", "logprobs")
        for prompt_tokens, _ in prompts:
            self._check_context(prompt_tokens, "prompt")
        n = self._choices(body)
        asked = self._whole(body, "max_tokens")
        max_tokens = 16 if asked is None else asked
        seed = self._whole(body, "seed")
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": str(body.get("model") or self.name),
                "system_fingerprint": f"fp_local_{self.name[:24]}"}
        events = self._completion_events(body, prompts, n, max_tokens, seed, top, echo,
                                         stream, base, cancelled)
        return events if stream else iter([("result", _collect(events, base))])

    def _completion_events(self, body: dict[str, Any], prompts: list[tuple[list[int], str]],
                           n: int, max_tokens: int, seed: int | None, top: int | None,
                           echo: bool, stream: bool, base: dict[str, Any],
                           cancelled: Callable[[], bool]) -> Iterator[Event]:
        completion_tokens = 0
        for p, (prompt_tokens, prompt_text) in enumerate(prompts):
            for i in range(n):
                index = p * n + i
                result = _Generation()
                if echo:
                    yield ("chunk", {**base, "choices": [{"index": index, "text": prompt_text,
                                                           "logprobs": None,
                                                           "finish_reason": None}]})
                if max_tokens > 0:
                    for text, entries in self._generate(
                            prompt_tokens, body, max_tokens=max_tokens,
                            stops=self._stops(body), grammar=None, top_logprobs=top,
                            seed=None if seed is None else seed + i, cancelled=cancelled,
                            result=result):
                        yield ("chunk", {**base, "choices": [{
                            "index": index, "text": text,
                            "logprobs": _legacy_logprobs(entries) if top is not None else None,
                            "finish_reason": None}]})
                completion_tokens += result.tokens
                yield ("chunk", {**base, "choices": [{"index": index, "text": "",
                                                       "logprobs": None,
                                                       "finish_reason": result.finish}]})
                if result.finish == "cancelled":
                    return
        if not stream or (body.get("stream_options") or {}).get("include_usage"):
            yield ("chunk", {**base, "choices": [], "usage": _usage(
                sum(len(t) for t, _ in prompts), completion_tokens)})

    # -- embeddings -------------------------------------------------------------------------
    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(items, list) or not items or not all(isinstance(i, str)
                                                               for i in items):
            raise LocalRequestError("'input' must be a string or a list of strings for a local "
                                    "model (token ids belong to another tokenizer).", "input")
        if self._embedder is None:
            self._embedder = self._load(embedding=True)
        embedder = self._embedder
        limit = embedder.n_ctx()
        tokens = 0
        vectors = []
        for i, text in enumerate(items):
            count = len(embedder.tokenize(text.encode("utf-8"), add_bos=True, special=False))
            if count > limit:
                raise LocalRequestError(
                    f"'input[{i}]' has {count} tokens; this model embeds at most {limit} "
                    f"({self.settings.key}.context_tokens).", "input", "context_length_exceeded")
            tokens += count
            vectors.append(embedder.embed(text, normalize=True))
        width = len(vectors[0])
        dims = self._whole(body, "dimensions")
        if dims is not None and not 1 <= dims <= width:
            raise LocalRequestError(f"'dimensions' is {dims}; this model's embeddings have "
                                    f"{width} dimensions, so ask for 1 to {width}.",
                                    "dimensions")
        data = []
        for i, vector in enumerate(vectors):
            values = [float(v) for v in vector][: dims or width]
            norm = math.sqrt(sum(v * v for v in values)) or 1.0
            values = [v / norm for v in values]
            encoded: Any = values
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        return {"object": "list", "data": data, "model": str(body.get("model") or self.name),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@dataclass
class _ChatPlan:
    prompt: list[int]
    grammar: LlamaGrammar | None
    mode: str
    named: dict[str, Any] | None
    tools: list[Any]
    stops: list[str]
    max_tokens: int | None
    top_logprobs: int | None
    seed: int | None
    n: int

    def seed_for(self, index: int) -> int | None:
        return None if self.seed is None else self.seed + index

    def shape(self, result: _Generation) -> tuple[str | None, list[dict[str, Any]], str]:
        """(content, tool calls, finish_reason) of a finished generation."""
        finish = "length" if result.finish == "length" else "stop"
        if self.mode == "named" and self.named is not None:
            return (None, [tool_call(str(self.named["name"]), result.text)], finish)
        if self.mode == "required":
            try:
                data = json.loads(result.text)
                call = tool_call(str(data["name"]), json.dumps(data["arguments"],
                                                               ensure_ascii=False))
            except (json.JSONDecodeError, KeyError, TypeError):
                return (result.text, [], finish)  # cut at max_tokens before it closed
            return (None, [call], "tool_calls" if finish == "stop" else finish)
        if self.mode == "auto" and TOOL_CALL_OPEN in result.text:
            content, calls = parse_tool_calls(result.text, self.tools)
            if calls:
                return (content, calls, "tool_calls")
        return (result.text, [], finish)


def _first_stop(text: str, stops: list[str], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop sequence."""
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return held


def _prompts(prompt: Any, model: LocalModel) -> list[tuple[list[int], str]]:
    """Prompt token lists and texts: a string, strings, token ids, or lists of token ids."""
    def ids(values: list[Any]) -> bool:
        return bool(values) and all(isinstance(v, int) and not isinstance(v, bool)
                                    for v in values)

    if prompt is None or prompt == "" or prompt == []:
        return [([model.llm.token_bos()] if model.llm.token_bos() != -1 else [], "")]
    bos = [model.llm.token_bos()] if model.llm._model.add_bos_token() else []
    if isinstance(prompt, str):
        return [(bos + model._tokens(prompt, special=False), prompt)]
    if isinstance(prompt, list) and ids(prompt):
        return [(list(prompt), model.llm.detokenize(prompt).decode("utf-8", "replace"))]
    if isinstance(prompt, list):
        out = []
        for item in prompt:
            if isinstance(item, str):
                out.append((bos + model._tokens(item, special=False), item))
            elif isinstance(item, list) and ids(item):
                out.append((list(item), model.llm.detokenize(item).decode("utf-8", "replace")))
            else:
                raise LocalRequestError("'prompt' must be a string, a list of strings, or token "
                                        "ids.", "prompt")
        return out
    raise LocalRequestError("'prompt' must be a string, a list of strings, or token ids.",
                            "prompt")


def _legacy_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]}
                             for e in entries],
            "text_offset": []}


def _collect(events: Iterator[Event], base: dict[str, Any]) -> dict[str, Any]:
    """A whole legacy completion from its chunks."""
    choices: dict[int, dict[str, Any]] = {}
    usage: dict[str, int] = {}
    for _, chunk in events:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for part in chunk["choices"]:
            choice = choices.setdefault(part["index"], {"index": part["index"], "text": "",
                                                        "logprobs": None,
                                                        "finish_reason": None})
            choice["text"] += part["text"]
            if part.get("logprobs"):
                merged = choice["logprobs"] or {"tokens": [], "token_logprobs": [],
                                                "top_logprobs": [], "text_offset": []}
                for key in ("tokens", "token_logprobs", "top_logprobs"):
                    merged[key].extend(part["logprobs"][key])
                choice["logprobs"] = merged
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
    for choice in choices.values():
        if choice["logprobs"] is not None:
            offsets, at = [], 0
            for token in choice["logprobs"]["tokens"]:
                offsets.append(at)
                at += len(token)
            choice["logprobs"]["text_offset"] = offsets
    return {**base, "choices": [choices[i] for i in sorted(choices)], "usage": usage}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
