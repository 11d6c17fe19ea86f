"""A model for bench/lifecycle.py: a candidate that raises on every input (importable by the
gateway process, which loads the pickled object)."""

from __future__ import annotations

from typing import Any


class Broken:
    """Looks like the stable classifier, fails every call."""

    def __init__(self, model: Any, trial: int = 0) -> None:
        self.trial = trial  # each trial's artifact differs, so each is a new version
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_

    def predict_proba(self, rows: Any) -> Any:
        raise RuntimeError("broken candidate")
