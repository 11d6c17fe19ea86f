"""Train the harmful-request guard's head on the calibration half of the outside corpus.

Positives: the `harmful` attacks of the calibration half (HarmBench, Do-Not-Answer, the
tense rephrasings; see bench/outside_corpus.py). Negatives: its benign items (chatterbot
conversations, perlfaq and Python FAQ questions) and the project's own benign requests
(tuning split). Prompt injections and jailbreaks are left out: they are the injection
guard's job. Nothing from the held-out half is read.

The head is a class-balanced logistic regression on the packaged all-MiniLM-L6-v2 sentence
vectors. Its threshold comes from 5-fold out-of-fold probabilities on the same calibration
data: the lowest probability at which at most TARGET_FP of the benign items would be
blocked. Then it is refitted on all of it and written to
`src/shipyard/guards/corpus/harmful_head.json`.

    .venv/bin/python bench/train_harmful.py
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from _harness import log
from shipyard.guards.classifier import fit_logistic
from shipyard.guards.corpus import OUTSIDE_SPLIT_SEED, load_corpus, load_outside
from shipyard.guards.embeddings import DEFAULT_MODEL, embedder, resolve_model
from shipyard.guards.harmful import HarmfulGuard, HarmfulHead

OUT = Path(__file__).resolve().parent.parent / "src/shipyard/guards/corpus/harmful_head.json"
TARGET_FP = 0.005  # on calibration, out of fold: room below the 1% goal on held-out text
SCALE = 10.0  # the unit vectors are scaled for the fit (a temperature), folded into weights
FOLDS = 5


def main() -> int:
    items = load_outside("calibration")
    positives = [i.text for i in items if i.label == "attack" and i.category == "harmful"]
    negatives = [i.text for i in items if i.label == "benign"]
    own = [i.text for i in load_corpus("tuning") if i.label == "benign"]
    texts = positives + negatives + own
    labels = np.asarray([1] * len(positives) + [0] * (len(negatives) + len(own)),
                        dtype=np.float32)
    log(f"{len(positives)} harmful, {len(negatives)} outside benign, {len(own)} own benign")
    model = embedder(resolve_model(True), None)
    rows = [HarmfulGuard.rows(t) for t in texts]
    flat = [r for rs in rows for r in rs]
    log(f"encoding {len(flat)} rows")
    vectors = model.encode(flat)
    # One row per text for the fit: the head of each (long texts are rare here).
    firsts, at = [], 0
    for rs in rows:
        firsts.append(at)
        at += len(rs)
    x = vectors[firsts] * SCALE
    order = list(range(len(texts)))
    random.Random(OUTSIDE_SPLIT_SEED).shuffle(order)
    folds = [order[k::FOLDS] for k in range(FOLDS)]
    oof = np.zeros(len(texts), dtype=np.float64)
    for k, test in enumerate(folds):
        held = set(test)
        fit = [i for i in order if i not in held]
        w, b = fit_logistic(x[fit], labels[fit], iterations=800, l2=1e-3, learning_rate=2.0)
        oof[test] = 1.0 / (1.0 + np.exp(-(x[test] @ w + b)))
        log(f"fold {k + 1}/{FOLDS}")
    benign_scores = np.sort(oof[labels == 0])
    allowed = int(TARGET_FP * len(benign_scores))
    threshold = float(benign_scores[len(benign_scores) - 1 - allowed]) + 1e-6
    threshold = min(max(threshold, 0.5), 0.999)
    recall = float((oof[labels == 1] >= threshold).mean())
    fp = float((oof[labels == 0] >= threshold).mean())
    log(f"out of fold at {threshold:.4f}: detection {recall:.1%}, false positives {fp:.2%}")
    w, b = fit_logistic(x, labels, iterations=800, l2=1e-3, learning_rate=2.0)
    head = HarmfulHead(np.asarray(w * SCALE, dtype=np.float32), float(b), threshold,
                       DEFAULT_MODEL, {
                           "trained_on": "outside corpus, calibration half (harmful vs "
                                         "benign) + the project's own benign tuning items",
                           "split_seed": OUTSIDE_SPLIT_SEED, "harmful": len(positives),
                           "benign": len(negatives) + len(own),
                           "out_of_fold_detection": round(recall, 4),
                           "out_of_fold_false_positives": round(fp, 4)})
    head.save(OUT)
    log(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
