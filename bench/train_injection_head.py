"""Refit the injection model layer's head, and its threshold, on the calibration half.

The built-in LoRA adapter (trained on the project's own tuning split) stays as it is; its
logistic head is refitted on the adapted model's vectors of the project's tuning split AND
the calibration half of the outside corpus (attacks other than `harmful` against every
benign item), because the old head, fitted on the project's corpus alone, called 5% of
ordinary outside text (code answers, chit-chat) attacks. The rows are what the guard
reads (`embeddings.bounded_rows`), each labelled with its item's label.

The threshold (`EMBEDDING_THRESHOLD`) is chosen on 5-fold out-of-fold probabilities: the
lowest at which the whole guard (cheap layers + model) blocks at most TARGET_FP of the
calibration half's benign items. Nothing from the held-out half is read.

    .venv/bin/python bench/train_injection_head.py [--cache /tmp/shipyard-injection-vectors.npz]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from _harness import log
from shipyard.guards.classifier import fit_logistic
from shipyard.guards.corpus import OUTSIDE_SPLIT_SEED, load_corpus, load_outside
from shipyard.guards.embeddings import builtin_adapter
from shipyard.guards.injection import InjectionGuard

TARGET_FP = 0.005
FOLDS = 5
GRID = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998)


def cached_encode(guard: InjectionGuard, rows: list[str], cache: Path) -> np.ndarray:
    known: dict[str, np.ndarray] = {}
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        known = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))
    todo = [r for r in dict.fromkeys(rows) if r not in known]
    log(f"{len(rows):,} rows, {len(todo):,} to encode")
    if todo:
        for text, vector in zip(todo, guard.embedder.encode(todo), strict=True):
            known[text] = vector
        texts = list(known)
        np.savez(cache, texts=np.asarray(texts), vectors=np.stack([known[t] for t in texts]))
    return np.stack([known[r] for r in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path,
                        default=Path("/tmp/shipyard-injection-vectors.npz"))
    args = parser.parse_args()
    guard = InjectionGuard(embeddings=True)
    items = [(i.text, int(i.label == "attack"), "own") for i in load_corpus("tuning")]
    items += [(i.text, int(i.label == "attack"), "outside") for i in load_outside("calibration")
              if i.category != "harmful"]
    parts, spans, rows = [], [], []
    for text, _, _ in items:
        cheap, own = guard.cheap_scores(text)
        parts.append(cheap)
        spans.append((len(rows), len(rows) + len(own)))
        rows.extend(own)
    vectors = cached_encode(guard, rows, args.cache)
    row_item = np.concatenate([np.full(b - a, k) for k, (a, b) in enumerate(spans)])
    y_item = np.asarray([label for _, label, _ in items], dtype=np.float32)
    scale = guard.embedder.scale
    x = vectors * scale
    y = y_item[row_item]
    order = list(range(len(items)))
    random.Random(OUTSIDE_SPLIT_SEED).shuffle(order)
    oof = np.zeros(len(items))
    for k in range(FOLDS):
        test = set(order[k::FOLDS])
        fit_rows = np.asarray([r for r in range(len(rows)) if row_item[r] not in test])
        w, b = fit_logistic(x[fit_rows], y[fit_rows], iterations=600, l2=1e-3,
                            learning_rate=1.0)
        for i in test:
            a, e = spans[i]
            if e > a:
                oof[i] = 1.0 / (1.0 + np.exp(-(float((x[a:e] @ w).max()) + b)))
        log(f"fold {k + 1}/{FOLDS}")
    outside_benign = [i for i, (_, lab, src) in enumerate(items) if src == "outside" and not lab]
    attacks = [i for i, (_, lab, src) in enumerate(items) if src == "outside" and lab]
    own_benign = [i for i, (_, lab, src) in enumerate(items) if src == "own" and not lab]
    chosen = None
    for limit in GRID:
        guard.embedding_threshold = limit
        stopped = []
        for i, cheap in enumerate(parts):
            verdict = guard.verdict(cheap)
            if not verdict.tripped and spans[i][1] > spans[i][0]:
                verdict = guard.verdict({**cheap, "embedding": oof[i]})
            stopped.append(verdict.tripped)
        fp = float(np.mean([stopped[i] for i in outside_benign]))
        det = float(np.mean([stopped[i] for i in attacks]))
        own_fp = float(np.mean([stopped[i] for i in own_benign]))
        log(f"threshold {limit}: outside detection {det:.1%}, false positives {fp:.2%} "
            f"(own benign {own_fp:.1%})")
        if chosen is None and fp <= TARGET_FP:
            chosen = (limit, det, fp)
    if chosen is None:
        raise SystemExit("no threshold meets the false-positive target on calibration")
    log(f"chosen embedding_threshold {chosen[0]} (out of fold: {chosen[1]:.1%} at "
        f"{chosen[2]:.2%})")
    w, b = fit_logistic(x, y, iterations=600, l2=1e-3, learning_rate=1.0)
    write_head(builtin_adapter(), w, b, len(items))
    print(f"EMBEDDING_THRESHOLD = {chosen[0]}")
    return 0


def write_head(path: Path, w: np.ndarray, b: float, examples: int) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as file:
        meta = dict(file.metadata() or {})
    tensors = load_file(str(path))
    tensors["head.weight"] = np.asarray(w, dtype=np.float32).reshape(-1)
    tensors["head.bias"] = np.asarray([b], dtype=np.float32)
    meta["head"] = ("refitted on the project's tuning split and the outside corpus's "
                    f"calibration half ({examples} items, split seed {OUTSIDE_SPLIT_SEED})")
    save_file(tensors, str(path), metadata=meta)
    log(f"wrote the head into {path}")


if __name__ == "__main__":
    sys.exit(main())
