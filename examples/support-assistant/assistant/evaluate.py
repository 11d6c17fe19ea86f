"""Retrieval quality on the shipped question set: hit@k (the right article among the top k).

    python -m assistant.evaluate            # from examples/support-assistant
    python -m assistant.evaluate --backend bm25 --k 3
"""

from __future__ import annotations

import argparse
import json
import time

from assistant.kb import load_articles, load_questions
from assistant.retrieval import Retriever, build


def hit_at(retriever: Retriever, questions: list[tuple[str, str]], k: int) -> dict[str, object]:
    started = time.perf_counter()
    misses = []
    for question, expected in questions:
        found = [a.id for a, _ in retriever.search(question, k=k)]
        if expected not in found:
            misses.append({"question": question, "expected": expected, "found": found})
    seconds = time.perf_counter() - started
    return {"backend": retriever.name, "k": k, "questions": len(questions),
            f"hit@{k}": round(1 - len(misses) / len(questions), 4),
            "ms_per_query": round(1000 * seconds / len(questions), 2), "misses": misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["minilm", "bm25"], default=None)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    result = hit_at(build(load_articles(), args.backend), load_questions(), args.k)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
