"""The semantic cache's in-process vector index: growth by doubling, the ring of slots once
full, dropped and expired entries, partitions, and its ranking against brute-force cosine."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.resilience.semantic import CANDIDATES, PopCount, SemanticIndex

DIM = 384
P1, P2 = "ab" * 32, "cd" * 32
POPCOUNTS = [None, False]  # numpy's bitwise_count when it has one; the numpy 1.x fallback


def unit(rows: int, *, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(vector: np.ndarray, *, seed: int, noise: float = 0.016) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = vector + rng.standard_normal(DIM).astype(np.float32) * noise
    return noisy / np.linalg.norm(noisy)


def filled(vectors: np.ndarray, *, max_entries: int, native: bool | None = None,
           partition: str = P1) -> SemanticIndex:
    index = SemanticIndex(dim=DIM, max_entries=max_entries, initial=4, native_popcount=native)
    for i, vector in enumerate(vectors):
        index.add(partition, vector, f"k{i}", ttl_s=60, now=1000.0)
    return index


@pytest.mark.parametrize("native", POPCOUNTS)
def test_popcount_counts_the_bits_of_every_word(native: bool | None) -> None:
    count = PopCount(native=native)
    rng = np.random.default_rng(1)
    words = np.concatenate([rng.integers(0, 2**64, 997, dtype=np.uint64, endpoint=False),
                            np.array([0, 2**64 - 1, 1, 2**63], dtype=np.uint64)])
    expected = [bin(int(w)).count("1") for w in words]
    out = np.empty(words.size, dtype=np.uint8 if count.small else np.uint64)
    assert count(words.copy(), out).tolist() == expected


@pytest.mark.parametrize("native", POPCOUNTS)
def test_ranking_matches_brute_force_cosine_on_random_data(native: bool | None) -> None:
    # No more entries than candidates: every entry is re-scored, so the answer is exact.
    vectors = unit(CANDIDATES, seed=2)
    index = filled(vectors, max_entries=1000, native=native)
    for j, query in enumerate(unit(50, seed=3)):
        match = index.search(P1, query, now=1000.0)
        assert match is not None
        best = int(np.argmax(vectors @ query))
        assert match.key == f"k{best}", j
        assert match.similarity == pytest.approx(float(vectors[best] @ query), abs=2e-3)


@pytest.mark.parametrize("native", POPCOUNTS)
def test_the_planted_neighbour_is_found_among_many(native: bool | None) -> None:
    vectors = unit(5000, seed=4)
    index = filled(vectors, max_entries=5000, native=native)
    rng = np.random.default_rng(5)
    for i in rng.integers(0, len(vectors), 40):
        query = near(vectors[i], seed=int(i))
        match = index.search(P1, query, now=1000.0)
        assert match is not None and match.key == f"k{i}"
        assert match.key == f"k{int(np.argmax(vectors @ query))}"  # brute force agrees


def test_the_index_grows_by_doubling_up_to_max_entries_and_keeps_its_entries() -> None:
    vectors = unit(50, seed=6)
    index = SemanticIndex(dim=DIM, max_entries=40, initial=4)
    sizes = []
    for i, vector in enumerate(vectors[:40]):
        index.add(P1, vector, f"k{i}", ttl_s=60, now=1000.0)
        sizes.append(index.size)
    assert sorted(set(sizes)) == [4, 8, 16, 32, 40]
    assert len(index) == 40
    for i in (0, 3, 4, 17, 39):  # entries added before and after each growth
        match = index.search(P1, vectors[i], now=1000.0)
        assert match is not None and match.key == f"k{i}"
        assert match.similarity == pytest.approx(1.0, abs=2e-3)


def test_once_full_the_oldest_entries_are_replaced() -> None:
    vectors = unit(50, seed=7)
    index = filled(vectors, max_entries=40)
    assert len(index) == 40 and index.size == 40
    for i in range(10):  # replaced by entries 40..49
        match = index.search(P1, vectors[i], now=1000.0)
        assert match is not None and match.key != f"k{i}"
        assert match.similarity < 0.5
    for i in (10, 25, 40, 49):
        match = index.search(P1, vectors[i], now=1000.0)
        assert match is not None and match.key == f"k{i}"


def test_dropped_expired_and_other_partitions_entries_are_never_returned() -> None:
    vectors = unit(3, seed=8)
    index = SemanticIndex(dim=DIM, max_entries=10)
    index.add(P1, vectors[0], "kept", ttl_s=60, now=1000.0)
    index.add(P1, vectors[1], "short", ttl_s=1, now=1000.0)
    index.add(P2, vectors[2], "other", ttl_s=60, now=1000.0)
    match = index.search(P1, vectors[1], now=1000.5)
    assert match is not None and match.key == "short"
    index.drop(match.slot)
    match = index.search(P1, vectors[1], now=1000.5)
    assert match is not None and match.key == "kept"  # the only live entry of P1
    index.add(P1, vectors[1], "again", ttl_s=1, now=1000.0)
    match = index.search(P1, vectors[1], now=1002.0)  # expired by then
    assert match is not None and match.key == "kept"
    match = index.search(P1, vectors[2], now=1002.0)  # P2's vector, asked in P1
    assert match is not None and match.key == "kept"
    match = index.search(P2, vectors[0], now=1000.0)
    assert match is not None and match.key == "other"
    assert index.search("ef" * 32, vectors[0], now=1000.0) is None
    assert SemanticIndex(dim=DIM, max_entries=10).search(P1, vectors[0]) is None


def test_a_partition_of_many_still_finds_its_entries_among_another_partitions() -> None:
    vectors = unit(400, seed=9)
    index = SemanticIndex(dim=DIM, max_entries=400, initial=4)
    for i, vector in enumerate(vectors):
        index.add(P1 if i % 10 else P2, vector, f"k{i}", ttl_s=60, now=1000.0)
    for i in (0, 10, 390):  # P2's entries: near duplicates of P1 entries rank first overall
        match = index.search(P2, near(vectors[i], seed=i), now=1000.0)
        assert match is not None and match.key == f"k{i}"
