"""De-duplication: exact (hash of the normalised row) and near-duplicate (MinHash LSH).

>>> exact = ExactDeduper()
>>> exact.seen(b"k1", 1), exact.seen(b"k1", 7)
(None, 1)
>>> near = NearDuplicates(NearDedupSpec(column="t", threshold=0.5))
>>> near.add(1, signature("the quick brown fox jumps", near.spec)) is None
True
>>> near.add(2, signature("the quick brown fox jumped", near.spec))
1
>>> near.clusters()
[[1, 2]]
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shipyard.data.config import NearDedupSpec

__all__ = ["ExactDeduper", "NearDuplicates", "column_keys", "row_key", "signature"]

_SPACE = re.compile(r"\s+")


def row_key(values: Iterable[Any]) -> bytes:
    """16-byte hash of the normalised values (case and whitespace do not make rows differ)."""
    text = "\x1f".join("\x00" if v is None else v if isinstance(v, str) else
                       orjson.dumps(v, default=str).decode() for v in values)
    if "  " in text or "\t" in text or "\n" in text:
        text = _SPACE.sub(" ", text)
    return hashlib.blake2b(text.casefold().encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()


def column_keys(columns: list[pa.Array]) -> list[bytes]:
    """`row_key`'s rule for whole typed columns: one 16-byte key per row.

    Each column is rendered as text by Arrow (a null as "\\x00"), the row's texts are joined;
    then, as in `row_key`, case and runs of whitespace do not make rows differ. Two rows get
    the same key exactly when their typed values are equal that way.
    """
    if not columns:
        return []
    texts = [pc.fill_null(c if pa.types.is_string(c.type) else pc.cast(c, pa.string()), "\x00")
             for c in columns]
    joined = (texts[0] if len(texts) == 1
              else pc.binary_join_element_wise(*texts, "\x1f"))
    blake = hashlib.blake2b
    space = _SPACE.sub
    out = []
    for text in joined.to_pylist():
        if "  " in text or "\t" in text or "\n" in text:
            text = space(" ", text)
        out.append(blake(text.casefold().encode("utf-8", "surrogatepass"), digest_size=16)
                   .digest())
    return out


class ExactDeduper:
    """Remembers each row key and the first row that had it; counts duplicates per key."""

    def __init__(self) -> None:
        self._first: dict[bytes, int] = {}
        self.removed = 0
        self._dups: dict[bytes, int] = {}

    def seen(self, key: bytes, row_id: int) -> int | None:
        """None for a new key; else the id of the first row with it (this row is a duplicate)."""
        first = self._first.setdefault(key, row_id)
        if first == row_id:
            return None
        self.removed += 1
        self._dups[key] = self._dups.get(key, 1) + 1
        return first

    def clusters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The largest duplicate groups: first row id and how many copies were seen."""
        top = sorted(self._dups.items(), key=lambda kv: -kv[1])[:limit]
        return [{"first_row": self._first[k], "copies": n} for k, n in top]


def _shingles(text: str, size: int) -> list[bytes]:
    data = _SPACE.sub(" ", text).strip().casefold().encode("utf-8", "surrogatepass")
    if len(data) <= size:
        return [data]
    return list({data[i : i + size] for i in range(len(data) - size + 1)})


def signature(text: str, spec: NearDedupSpec) -> np.ndarray[Any, Any]:
    """MinHash signature of `text`: character shingles, CRC-32 (fast, same in every process)."""
    from datasketch import MinHash  # the `data` extra

    mh = MinHash(num_perm=spec.num_perm, seed=1, permutations=_permutations(spec.num_perm),
                 scheme="affine32", hashfunc=zlib.crc32)
    mh.update_batch(_shingles(text, spec.shingle))
    return np.asarray(mh.hashvalues)


_PERMS: dict[int, Any] = {}


def _permutations(num_perm: int) -> Any:
    # Building the permutations costs more than hashing a short text: do it once per size.
    perms = _PERMS.get(num_perm)
    if perms is None:
        from datasketch import MinHash

        perms = _PERMS[num_perm] = MinHash(num_perm=num_perm, seed=1, scheme="affine32",
                                           hashfunc=zlib.crc32).permutations
    return perms


class NearDuplicates:
    """MinHash LSH index: each added row joins the cluster of the first similar row, if any."""

    def __init__(self, spec: NearDedupSpec) -> None:
        from datasketch import MinHashLSH

        self.spec = spec
        self._lsh = MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm)
        self._cluster: dict[int, list[int]] = {}
        self.matched = 0

    def add(self, row_id: int, hashvalues: np.ndarray[Any, Any]) -> int | None:
        """Index `row_id`; return the row it near-duplicates (which stays indexed), or None."""
        from datasketch import LeanMinHash

        mh = LeanMinHash(seed=1, hashvalues=hashvalues, scheme="affine32")
        hits = self._lsh.query(mh)
        if hits:
            first = min(hits)
            self._cluster.setdefault(first, [first]).append(row_id)
            self.matched += 1
            return int(first)
        self._lsh.insert(row_id, mh, check_duplication=False)
        return None

    def clusters(self, limit: int = 1000) -> list[list[int]]:
        """Clusters of row ids (first row first), largest first."""
        groups = sorted(self._cluster.values(), key=lambda g: (-len(g), g[0]))
        return [list(g) for g in groups[:limit]]
