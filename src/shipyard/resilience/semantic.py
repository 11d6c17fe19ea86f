"""The semantic layer of the response cache: answers to paraphrases (opt-in per alias).

    models:
      support:
        provider: openai
        cache: {semantic: {threshold: 0.95}}

A chat request is split in two. Everything but the wording of its last user message — the
tenant, the alias, the system prompt, earlier turns, every parameter — is its *partition*,
hashed exactly; the last user message, normalised (Unicode NFKC, case-folded, whitespace
collapsed), is embedded with the packaged all-MiniLM-L6-v2 model through the guards' batching
worker (`shipyard.guards.embeddings`). A cached answer is served when a prompt of the same
partition is at least `threshold` similar (cosine). So tenants never share answers, and two
requests differing in anything but the phrasing of the question never match.

The exact cache stays in front: an identical request is answered without embedding anything.
Requests with tools (unless `semantic.tools`), with temperature > 0 (unless the cache's
`nonzero_temperature`), with n > 1, or whose last message is not a user's text, use the
exact cache only.

**Where entries live.** The answers themselves are entries of the exact cache (in Redis with
`state.backend: redis`, with their TTL). The vectors live in a bounded in-process index per
replica (`SemanticIndex`, `max_entries`, oldest dropped first): the local Redis has no vector
search (no RediSearch module), so with Redis each replica also appends its new vectors to a
Redis stream per alias and reads the others' every `sync_interval_s` — a paraphrase cached by
one replica is served by all. A vector whose answer expired is dropped when it is found.

**Search.** Each vector is also kept as a 384-bit sign code; a lookup ranks the partition's
codes by Hamming distance (popcount over six 64-bit words a vector) and re-scores the best
`CANDIDATES` exactly (float16 vectors, float32 dot products): about 4x faster than
brute-force cosine at 100,000 entries (bench/frontdoor.py).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from shipyard.config.resilience import SemanticCacheConfig
from shipyard.errors import ConfigError
from shipyard.guards.embeddings import Embedder, ModelBusy, embedder, resolve_model
from shipyard.state.base import KeyValue
from shipyard.state.redis import RedisKeyValue

__all__ = ["CANDIDATES", "Match", "Probe", "SemanticCache", "SemanticIndex", "normalise",
           "partition_of", "probe_text", "semantic_cache"]

log = logging.getLogger("shipyard.cache")
CANDIDATES = 64  # vectors re-scored exactly after the Hamming prefilter
_SPACE = re.compile(r"\s+")
_IGNORED = frozenset({"stream", "stream_options", "user", "model"})


def normalise(text: str) -> str:
    """The prompt as the model reads it for matching: NFKC, case-folded, single spaces."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def probe_text(payload: dict[str, Any]) -> str | None:
    """The last user message's text, when the request ends in one (else no semantic match)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            return None  # images and other parts: exact matches only
        content = " ".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        return None
    text = normalise(content)
    return text or None


def partition_of(tenant: str, alias: str, payload: dict[str, Any]) -> str:
    """Everything of the request but its last message's wording, hashed: prompts match only
    within one partition."""
    messages = payload.get("messages") or []
    rest = {k: v for k, v in payload.items() if k not in _IGNORED and k != "messages"}
    head = messages[:-1]
    last = {k: v for k, v in messages[-1].items() if k != "content"} if messages else {}
    blob = orjson.dumps([tenant, alias, rest, head, last], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


def _partition_id(partition: str) -> int:
    return int.from_bytes(bytes.fromhex(partition[:16]), "big", signed=True)


@dataclass(frozen=True, slots=True)
class Probe:
    """What a lookup needs and, on a miss, what the new entry is made of."""

    partition: str
    vector: Any  # unit float32 vector


@dataclass(frozen=True, slots=True)
class Match:
    similarity: float
    key: str  # the exact cache key of the answer
    slot: int


class SemanticIndex:
    """A bounded in-process vector index (see the module docstring); not thread-safe (the
    event loop is its only user).

    >>> import numpy as np
    >>> index = SemanticIndex(dim=4, max_entries=2)
    >>> index.add("ab" * 32, np.array([1, 0, 0, 0], "f4"), "cache:a", ttl_s=60)
    >>> index.search("ab" * 32, np.array([0.99, 0.1, 0, 0], "f4")).key
    'cache:a'
    """

    def __init__(self, *, dim: int, max_entries: int) -> None:
        import numpy as np  # the embeddings extra

        self._np = np
        self.dim = dim
        self.capacity = max_entries
        self.words = (dim + 63) // 64
        self.codes = np.zeros((max_entries, self.words), dtype=np.uint64)
        self.vectors = np.zeros((max_entries, dim), dtype=np.float16)
        self.partitions = np.zeros(max_entries, dtype=np.int64)
        self.expires = np.zeros(max_entries, dtype=np.float64)
        self.keys: list[tuple[str, str] | None] = [None] * max_entries  # (partition, key)
        self.added = 0  # entries ever added; the next slot is added % capacity
        self._weights = (np.uint64(1) << np.arange(64, dtype=np.uint64))
        self._popcount = getattr(np, "bitwise_count", None)
        self._table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def code(self, vector: Any) -> Any:
        """The sign bits of `vector`, packed into 64-bit words."""
        np = self._np
        bits = np.zeros(self.words * 64, dtype=np.uint64)
        bits[: self.dim] = vector > 0
        return (bits.reshape(self.words, 64) * self._weights).sum(axis=1, dtype=np.uint64)

    def add(self, partition: str, vector: Any, key: str, *, ttl_s: float,
            now: float | None = None) -> None:
        slot = self.added % self.capacity
        self.added += 1
        self.codes[slot] = self.code(vector)
        self.vectors[slot] = vector
        self.partitions[slot] = _partition_id(partition)
        self.expires[slot] = (time.time() if now is None else now) + ttl_s
        self.keys[slot] = (partition, key)

    def drop(self, slot: int) -> None:
        self.expires[slot] = 0.0
        self.keys[slot] = None

    def _distances(self, code: Any, n: int) -> Any:
        np = self._np
        xored = np.bitwise_xor(self.codes[:n], code)
        if self._popcount is not None:
            return self._popcount(xored).sum(axis=1, dtype=np.int32)
        return self._table[xored.view(np.uint8)].sum(axis=1, dtype=np.int32)

    def search(self, partition: str, vector: Any, *, now: float | None = None
               ) -> Match | None:
        """The most similar live entry of `partition`, or None when it has none."""
        np = self._np
        n = len(self)
        if n == 0:
            return None
        now = time.time() if now is None else now
        distances = self._distances(self.code(vector), n)
        outside = (self.partitions[:n] != _partition_id(partition)) | (self.expires[:n] <= now)
        distances[outside] = 1 << 20
        k = min(CANDIDATES, n)
        candidates = (np.argpartition(distances, k - 1)[:k] if n > k
                      else np.arange(n))
        candidates = candidates[distances[candidates] < 1 << 20]
        if candidates.size == 0:
            return None
        scores = self.vectors[candidates].astype(np.float32) @ vector.astype(np.float32)
        for best in np.argsort(-scores):
            slot = int(candidates[best])
            entry = self.keys[slot]
            if entry is not None and entry[0] == partition:  # the full hash, not 64 bits
                return Match(float(scores[best]), entry[1], slot)
        return None


def encode_entry(partition: str, key: str, vector: Any, expires: float) -> dict[bytes, bytes]:
    """An index entry as the fields of a Redis stream record."""
    return {b"p": partition.encode(), b"k": key.encode(),
            b"v": vector.astype("float16").tobytes(), b"e": repr(expires).encode()}


def decode_entry(fields: dict[bytes, bytes]) -> tuple[str, str, Any, float]:
    import numpy as np

    return (fields[b"p"].decode(), fields[b"k"].decode(),
            np.frombuffer(fields[b"v"], dtype=np.float16).astype(np.float32),
            float(fields[b"e"]))


class SemanticCache:
    """The semantic layer of one alias's cache stage: embeds, looks up and remembers prompts;
    with Redis, shares its index entries with the other replicas through a stream."""

    def __init__(self, alias: str, config: SemanticCacheConfig, *, ttl_s: float,
                 store: KeyValue, model: Embedder, where: str = "") -> None:
        self.alias = alias
        self.config = config
        self.ttl_s = ttl_s
        self.model = model
        self.where = where or f"models.{alias}.cache.semantic"
        self.index = SemanticIndex(dim=model.dim, max_entries=config.max_entries)
        self.redis = store if isinstance(store, RedisKeyValue) else None
        self.stream = f"{self.redis.prefix if self.redis else ''}semcache:{alias}"
        self.replica = secrets.token_hex(6).encode()
        self._last_id = b"0-0"
        self._synced = -math.inf

    def eligible(self, payload: Any) -> bool:
        return isinstance(payload, dict) and (self.config.tools or not payload.get("tools"))

    async def probe(self, tenant: str, payload: dict[str, Any]) -> Probe | None:
        """Embed the request's last user message (None: not a candidate, or the model is
        busy — the request then goes on without the semantic layer)."""
        text = probe_text(payload)
        if text is None:
            return None
        try:
            vectors = await self.model.aencode([text])
        except ModelBusy:
            log.warning("semantic cache of %s: the embedding model is busy; looking up "
                        "exact matches only", self.alias)
            return None
        return Probe(partition_of(tenant, self.alias, payload), vectors[0])

    async def lookup(self, probe: Probe) -> Match | None:
        await self._sync()
        return self.index.search(probe.partition, probe.vector)

    async def remember(self, probe: Probe, key: str) -> None:
        """Index a newly cached answer (and tell the other replicas, with Redis)."""
        expires = time.time() + self.ttl_s
        self.index.add(probe.partition, probe.vector, key, ttl_s=self.ttl_s)
        if self.redis is None:
            return
        fields = {**encode_entry(probe.partition, key, probe.vector, expires),
                  b"r": self.replica}
        client = self.redis.client
        try:
            await self.redis.state.run(
                lambda: client.xadd(self.stream, fields, maxlen=self.config.max_entries,
                                    approximate=True),
                feature="cache")
        except Exception as exc:  # a cache outage never fails the request
            log.warning("semantic cache write failed (%s)", type(exc).__name__)

    async def _sync(self) -> None:
        """Read the entries other replicas added since the last read."""
        if self.redis is None:
            return
        now = time.monotonic()
        if now - self._synced < self.config.sync_interval_s:
            return
        self._synced = now
        client = self.redis.client
        try:
            while True:
                records = await self.redis.state.run(
                    functools.partial(client.xrange, self.stream, min=b"(" + self._last_id,
                                      count=1000),
                    feature="cache")
                for record_id, fields in records:
                    self._last_id = record_id
                    if fields.get(b"r") == self.replica:
                        continue
                    partition, key, vector, expires = decode_entry(fields)
                    left = expires - time.time()
                    if left > 0:
                        self.index.add(partition, vector, key, ttl_s=left)
                if len(records) < 1000:
                    return
        except Exception as exc:  # a cache outage never fails the request
            log.warning("semantic cache sync failed (%s)", type(exc).__name__)


def semantic_cache(alias: str, config: SemanticCacheConfig, *, ttl_s: float, store: KeyValue,
                   where: str) -> SemanticCache:
    """The semantic layer for `alias`, with its embedding model loaded (offline); a missing
    model or extra fails at start-up naming the config key."""
    try:
        model = embedder(resolve_model(config.embeddings))
    except ConfigError as exc:
        raise ConfigError(f"Config key '{where}.embeddings': {exc.message}") from None
    return SemanticCache(alias, config, ttl_s=ttl_s, store=store, model=model, where=where)
