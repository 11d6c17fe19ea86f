"""Exact-match response cache, per model alias or service (opt-in).

The key is a hash of the tenant, the alias (or service) and the normalised request (every
parameter, sorted; `stream`, `stream_options` and `user` left out, so a streamed and a plain
request share answers; a service's validated input as it is), so tenants never share
answers.
Only complete answers are stored — never errors, never partial streams. Requests with
`temperature` > 0 (or unset, which means 1) bypass the cache unless `nonzero_temperature` is
on. Identical requests that arrive while the first is still in flight wait for it instead of
going upstream too (single flight), so at peak an answer is fetched once per TTL. A hit can be
served as a stream. Hits are marked with `x-shipyard-cache: hit` and in the trace.

With `semantic`, an exact miss is looked up again by meaning (`shipyard.resilience.semantic`):
a paraphrase of a cached prompt, everything else equal, is answered from the cache
(`x-shipyard-cache: semantic_hit` and `x-shipyard-cache-similarity`; a best match just below
the threshold is a `near_miss`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from shipyard.config.resilience import CacheConfig
from shipyard.observe.tracing import record_span
from shipyard.pipeline import Call, Handler, Reply, Stage
from shipyard.resilience.semantic import Probe, SemanticCache
from shipyard.state.base import KeyValue

__all__ = ["CacheStage", "cache_key", "completion_to_sse", "sse_to_completion"]

log = logging.getLogger("shipyard.cache")
_IGNORED = frozenset({"stream", "stream_options", "user"})


def cache_key(tenant: str, alias: str, endpoint: str, payload: Any) -> str:
    normal = ({k: v for k, v in payload.items() if k not in _IGNORED and k != "model"}
              if endpoint != "invoke" and isinstance(payload, dict) else payload)
    blob = orjson.dumps([tenant, alias, endpoint, normal], option=orjson.OPT_SORT_KEYS)
    return "cache:" + hashlib.sha256(blob).hexdigest()


def _complete_answer(body: bytes) -> bool:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(data, dict):
        return False
    if data.get("object") == "list":
        return bool(data.get("data"))  # embeddings
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def completion_to_sse(body: bytes, *, include_usage: bool) -> list[bytes]:
    """Turn a cached (non-streaming) answer into the SSE events of the same answer."""
    data = orjson.loads(body)
    chat = data.get("object") == "chat.completion"
    base = {"id": data.get("id"), "object": "chat.completion.chunk" if chat else
            "text_completion", "created": data.get("created"), "model": data.get("model")}
    events: list[dict[str, Any]] = []
    choices: list[dict[str, Any]] = data.get("choices") or []
    for choice in choices:
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            events.append({**base, "choices": [{"index": index, "delta": {
                "role": "assistant", "content": message.get("content") or ""},
                "logprobs": None, "finish_reason": None}]})
            if message.get("tool_calls"):
                events.append({**base, "choices": [{"index": index, "delta": {
                    "tool_calls": [{**call, "index": i} for i, call in
                                   enumerate(message["tool_calls"])]},
                    "logprobs": None, "finish_reason": None}]})
            events.append({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                                "finish_reason": choice.get("finish_reason")}]})
        else:
            events.append({**base, "choices": [{"index": index, "text": choice.get("text", ""),
                                                "logprobs": None,
                                                "finish_reason": choice.get("finish_reason")}]})
    if include_usage and data.get("usage"):
        events.append({**base, "choices": [], "usage": data["usage"]})
    out = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
    out.append(b"data: [DONE]\n\n")
    return out


def sse_to_completion(raw: bytes) -> bytes | None:
    """Assemble a complete streamed answer (text only) into a non-streaming answer."""
    text = raw.replace(b"\r\n", b"\n")
    if b"data: [DONE]" not in text:
        return None
    contents: dict[int, list[str]] = {}
    finishes: dict[int, str] = {}
    base: dict[str, Any] = {}
    usage: Any = None
    chat = True
    for event in text.split(b"\n\n"):
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(obj, dict) or obj.get("error"):
                return None
            base = base or {k: obj.get(k) for k in ("id", "created", "model")}
            chat = obj.get("object") == "chat.completion.chunk"
            if obj.get("usage"):
                usage = obj["usage"]
            for choice in obj.get("choices") or []:
                index = int(choice.get("index", 0))
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    if delta.get("tool_calls") or delta.get("function_call"):
                        return None  # tool calls are not reassembled: do not cache
                    piece = delta.get("content")
                else:
                    piece = choice.get("text")
                if isinstance(piece, str):
                    contents.setdefault(index, []).append(piece)
                if choice.get("finish_reason"):
                    finishes[index] = choice["finish_reason"]
    if not finishes or set(finishes) != set(contents) | set(finishes):
        return None
    choices = []
    for index in sorted(finishes):
        content = "".join(contents.get(index, []))
        if chat:
            choices.append({"index": index, "message": {"role": "assistant", "content": content},
                            "logprobs": None, "finish_reason": finishes[index]})
        else:
            choices.append({"index": index, "text": content, "logprobs": None,
                            "finish_reason": finishes[index]})
    answer = {**base, "object": "chat.completion" if chat else "text_completion",
              "choices": choices}
    if usage:
        answer["usage"] = usage
    return orjson.dumps(answer)


class CacheStage(Stage):
    def __init__(self, alias: str, config: CacheConfig, store: KeyValue, *,
                 semantic: SemanticCache | None = None, namespace: str | None = None) -> None:
        self.alias = alias
        # Whose answers the entries are: the alias, or one version of its configuration
        # during a rollout (`alias@vN`), so no version answers from another's cache.
        self.namespace = namespace or alias
        self.config = config
        self.store = store
        self.semantic = semantic
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}
        self.hits = 0
        self.misses = 0

    def _cacheable(self, call: Call) -> bool:
        if call.endpoint in ("embeddings", "invoke") or self.config.nonzero_temperature:
            return True
        temperature = call.payload.get("temperature", 1)
        n = call.payload.get("n", 1)
        return bool(temperature == 0 and n == 1)

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        if not self._cacheable(call):
            _mark(call, "bypass")
            return await call_next(call)
        looked = time.perf_counter()
        key = cache_key(call.ctx.tenant_id, self.namespace, call.endpoint, call.payload)
        value = await self._get(key)
        if value is None and key in self._inflight:
            try:
                value = await asyncio.shield(self._inflight[key])
            except asyncio.CancelledError:
                raise
            except Exception:  # the leader failed: go upstream ourselves
                value = None
        if value is not None:
            self.hits += 1
            record_span(call.ctx, "cache", looked, time.perf_counter(),
                        attributes={"shipyard.cache": "hit"})
            return self._hit(call, value)
        probe: Probe | None = None
        similarity: float | None = None
        semantic = self.semantic
        if semantic is not None and call.endpoint == "chat/completions" and (
                semantic.eligible(call.payload)):
            probe = await semantic.probe(call.ctx.tenant_id, call.payload)
            match = await semantic.lookup(probe) if probe is not None else None
            if match is not None:
                similarity = match.similarity
                if similarity >= semantic.config.threshold:
                    value = await self._get(match.key)
                    if value is not None:
                        self.hits += 1
                        record_span(call.ctx, "cache", looked, time.perf_counter(),
                                    attributes={"shipyard.cache": "semantic_hit",
                                                "shipyard.cache.similarity": similarity})
                        return self._hit(call, value, similarity=similarity)
                    semantic.index.drop(match.slot)  # its answer expired
                    similarity = None
        self.misses += 1
        near = (similarity is not None and semantic is not None and similarity >= (
            semantic.config.threshold - semantic.config.near_miss))
        outcome = "near_miss" if near else "miss"
        _mark(call, outcome, similarity)
        record_span(call.ctx, "cache", looked, time.perf_counter(),
                    attributes={"shipyard.cache": outcome} if similarity is None else
                    {"shipyard.cache": outcome, "shipyard.cache.similarity": similarity})
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            reply = await call_next(call)
        except BaseException:
            self._settle(key, future, None)
            raise
        reply.headers["x-shipyard-cache"] = outcome
        if similarity is not None:
            reply.headers["x-shipyard-cache-similarity"] = f"{similarity:.4f}"
        if reply.stream is not None:
            reply.stream = self._store_stream(key, future, reply.stream, probe)
            return reply
        if call.endpoint == "invoke":
            # A service's output (never a guard's or a person's complete answer envelope).
            stored = (orjson.dumps(reply.data) if reply.status == 200 and not reply.body
                      and reply.data is not None else None)
        else:
            body = reply.body or (orjson.dumps(reply.data) if reply.data is not None else b"")
            stored = body if reply.status == 200 and _complete_answer(body) else None
        if stored is not None:
            await self._set(key, stored, probe)
        self._settle(key, future, stored)
        return reply

    def _hit(self, call: Call, value: bytes, *, similarity: float | None = None) -> Reply:
        outcome = "hit" if similarity is None else "semantic_hit"
        _mark(call, outcome, similarity)
        call.served_by = self.alias
        headers = {"x-shipyard-cache": outcome}
        if similarity is not None:
            headers["x-shipyard-cache-similarity"] = f"{similarity:.4f}"
        if call.endpoint == "invoke":
            return Reply(data=orjson.loads(value), headers=headers)
        if call.stream:
            events = completion_to_sse(value, include_usage=call.client_wants_usage)
            return Reply(stream=_replay(events), headers=headers)
        return Reply(body=value, headers=headers)

    async def _store_stream(self, key: str, future: asyncio.Future[bytes | None],
                            stream: AsyncIterator[bytes],
                            probe: Probe | None) -> AsyncIterator[bytes]:
        collected: list[bytes] = []
        size = 0
        stored: bytes | None = None
        try:
            async for chunk in stream:
                size += len(chunk)
                if size <= self.config.max_bytes:
                    collected.append(chunk)
                yield chunk
            if size <= self.config.max_bytes:
                stored = sse_to_completion(b"".join(collected))
                if stored is not None:
                    await self._set(key, stored, probe)
        finally:
            self._settle(key, future, stored)

    def _settle(self, key: str, future: asyncio.Future[bytes | None],
                value: bytes | None) -> None:
        if not future.done():
            future.set_result(value)
        if self._inflight.get(key) is future:
            del self._inflight[key]

    async def _get(self, key: str) -> bytes | None:
        try:
            return await self.store.get(key)
        except Exception as exc:  # a cache outage must never fail the request
            log.warning("cache read failed (%s); serving without the cache", type(exc).__name__)
            return None

    async def _set(self, key: str, value: bytes, probe: Probe | None = None) -> None:
        try:
            await self.store.set(key, value, self.config.ttl_s)
        except Exception as exc:  # a cache outage must never fail the request
            log.warning("cache write failed (%s)", type(exc).__name__)
            return
        if probe is not None and self.semantic is not None:
            await self.semantic.remember(probe, key)


def _mark(call: Call, outcome: str, similarity: float | None = None) -> None:
    attributes = call.ctx.attributes if call.ctx.attributes is not None else {}
    attributes["cache"] = outcome
    if similarity is not None:
        attributes["cache_similarity"] = round(similarity, 4)
    call.ctx.attributes = attributes


async def _replay(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event
