"""Failed-authentication limiting: a token bucket of failures per client address and per key id.

Each failed attempt (a wrong, unknown, revoked or expired key, a bad token) takes one token
from the bucket of its client address and, for an existing key id, from that key id's bucket;
buckets refill evenly over `window_s`. While a bucket is empty, attempts from that address (or
on that key id) are answered 429 with Retry-After **without being checked**, so guessing runs
at the refill rate at best. A client address that authenticated with a key recently
(`known_good_s`) keeps using that key while locked out, so an attacker who knows a key id (or
shares a NAT address) cannot lock a working client out. State is per process and bounded
(`max_tracked`); a lockout is reported once per burst (at most once per window and
subject) for the audit log.

>>> limiter = FailureLimiter(per_address=3, per_key=10, window_s=60)
>>> for _ in range(3):
...     _ = limiter.fail("10.0.0.9", None)
>>> limiter.locked("10.0.0.9", None) > 0
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["FailureLimiter"]


class _Buckets:
    """Token buckets keyed by a subject, bounded in size. Each entry is (tokens, last update,
    when its last lockout was reported)."""

    def __init__(self, capacity: int, window_s: float, max_tracked: int) -> None:
        self.capacity = float(capacity)
        self.window_s = window_s
        self.rate = capacity / window_s  # tokens per second
        self.max_tracked = max_tracked
        self._state: dict[str, tuple[float, float, float]] = {}

    def _tokens(self, subject: str, now: float) -> float:
        state = self._state.get(subject)
        if state is None:
            return self.capacity
        tokens, at, _ = state
        return min(self.capacity, tokens + (now - at) * self.rate)

    def wait_s(self, subject: str, now: float) -> float:
        """Seconds until the subject may try again (0: it may now)."""
        tokens = self._tokens(subject, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, subject: str, now: float) -> bool:
        """Count one failure; True when it starts a lockout (the bucket just emptied, and no
        lockout of this subject was reported within the window: one report per burst)."""
        before = self._tokens(subject, now)
        after = max(0.0, before - 1.0)
        state = self._state.get(subject)
        reported = state[2] if state is not None else -math.inf
        if state is None and len(self._state) >= self.max_tracked:
            self._prune(now)
        starts = before >= 1.0 > after and now - reported > self.window_s
        self._state[subject] = (after, now, now if starts else reported)
        return starts

    def _prune(self, now: float) -> None:
        """Forget subjects whose buckets are full again; if none are, the oldest tenth."""
        full = [s for s in self._state if self._tokens(s, now) >= self.capacity]
        for subject in full or list(self._state)[: max(1, self.max_tracked // 10)]:
            del self._state[subject]


class FailureLimiter:
    def __init__(self, *, per_address: int, per_key: int, window_s: float,
                 known_good_s: float = 3600.0, max_tracked: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._addresses = _Buckets(per_address, window_s, max_tracked)
        self._keys = _Buckets(per_key, window_s, max_tracked)
        self.known_good_s = known_good_s
        self.max_tracked = max_tracked
        self._good: dict[tuple[str, bytes], float] = {}
        self._clock = clock
        self.lockouts = 0

    def locked(self, address: str | None, key_id: str | None) -> float:
        """Seconds until an attempt from `address` on `key_id` will be checked (0: now)."""
        now = self._clock()
        wait = self._addresses.wait_s(address, now) if address else 0.0
        if key_id is not None:
            wait = max(wait, self._keys.wait_s(key_id, now))
        return wait

    def fail(self, address: str | None, key_id: str | None) -> list[tuple[str, str]]:
        """Count a failed attempt; returns the (kind, subject) pairs it just locked out."""
        now = self._clock()
        locked: list[tuple[str, str]] = []
        if address and self._addresses.take(address, now):
            locked.append(("address", address))
        if key_id is not None and self._keys.take(key_id, now):
            locked.append(("key", key_id))
        self.lockouts += len(locked)
        return locked

    def succeed(self, address: str | None, fingerprint: bytes) -> None:
        """Remember that `address` authenticated with the key of this fingerprint."""
        if not address or self.known_good_s <= 0:
            return
        key = (address, fingerprint)
        if key not in self._good and len(self._good) >= self.max_tracked:
            now = self._clock()
            self._good = {k: t for k, t in self._good.items() if t > now}
            if len(self._good) >= self.max_tracked:
                self._good.clear()
        self._good[key] = self._clock() + self.known_good_s

    def known(self, address: str | None, fingerprint: bytes) -> bool:
        if not address:
            return False
        until = self._good.get((address, fingerprint))
        return until is not None and until > self._clock()
