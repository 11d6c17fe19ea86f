"""Model artifacts: content-addressed copies in the artifact store, hash-checked when loaded,
and the built-in way to call them (`predict` or `predict_proba`).

A registered artifact is copied to `ARTIFACT_DIR/sha256/ab/<sha256><suffix>`; the version
row keeps the hash, and loading refuses a file whose bytes no longer match it (a copy changed
on disk is never served as the version it claims to be).

Pickle and joblib files run code when they are loaded: a file from someone you do not trust
can do anything the gateway's user can. Register only files you built or verified
(docs/lifecycle.md, "Security"). ONNX files hold no code; they need the `onnx` extra.

>>> stored = store_artifact(Path("model.joblib"), Path(".shipyard/artifacts"))  # doctest: +SKIP
>>> model = load_model(stored)  # doctest: +SKIP
>>> ModelCaller(model, "predict_proba")({"features": [1.0, 2.0]})  # doctest: +SKIP
{'prediction': 1, 'probabilities': {'0': 0.1, '1': 0.9}}
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.config.schema import Config
from shipyard.errors import ConfigError, ValidationFailed

__all__ = [
    "ARTIFACT_FORMATS",
    "ModelCaller",
    "StoredArtifact",
    "artifact_dir",
    "artifact_format",
    "file_sha256",
    "load_model",
    "store_artifact",
]

# File suffix → format, declared once (config help, docs and loading derive from it).
ARTIFACT_FORMATS: dict[str, str] = {".joblib": "joblib", ".pkl": "pickle",
                                    ".pickle": "pickle", ".onnx": "onnx"}


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact in the store: where it is, its hash and its format."""

    path: Path
    sha256: str
    format: str


def artifact_dir(config: Config) -> Path:
    """Where registered artifacts live (`lifecycle.artifact_dir`, or beside the store)."""
    if config.lifecycle.artifact_dir:
        return Path(config.lifecycle.artifact_dir)
    url = config.store.url
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///")).expanduser().parent / "artifacts"
    return Path(".shipyard/artifacts")


def artifact_format(path: Path, *, key: str = "model") -> str:
    suffix = path.suffix.lower()
    if suffix not in ARTIFACT_FORMATS:
        raise ConfigError(f"'{key}' is '{path}', whose suffix '{suffix}' is not a model "
                          f"format Shipyard loads; use one of {', '.join(ARTIFACT_FORMATS)}.")
    return ARTIFACT_FORMATS[suffix]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_artifact(source: Path, artifact_dir: Path, *, key: str = "model") -> StoredArtifact:
    """Copy `source` into the content-addressed store (once per content) and return it."""
    if not source.is_file():
        raise ConfigError(f"'{key}' is '{source}', which is not a file; give the path of the "
                          "model file (e.g. model.joblib).")
    fmt = artifact_format(source, key=key)
    sha = file_sha256(source)
    target = artifact_dir / "sha256" / sha[:2] / f"{sha}{source.suffix.lower()}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)  # atomic: a reader never sees half a file
    return StoredArtifact(target, sha, fmt)


def load_model(artifact: StoredArtifact) -> Any:
    """Load a stored artifact after checking its bytes still hash to what was registered."""
    if not artifact.path.is_file():
        raise ConfigError(f"The artifact {artifact.path} is missing from the artifact store; "
                          "register the version again from its original file.")
    actual = file_sha256(artifact.path)
    if actual != artifact.sha256:
        raise ConfigError(f"The artifact {artifact.path} has sha256 {actual[:12]}..., not the "
                          f"registered {artifact.sha256[:12]}...; it changed on disk. Register "
                          "the file again as a new version instead of editing it in place.")
    try:
        return _load(artifact)
    except ConfigError:
        raise
    except Exception as exc:  # a corrupt file or a class that no longer imports
        raise ConfigError(f"The {artifact.format} file {artifact.path} cannot be loaded "
                          f"({type(exc).__name__}: {str(exc)[:200]}); check that it is a "
                          "model saved with the libraries installed here.") from None


def _load(artifact: StoredArtifact) -> Any:
    if artifact.format == "onnx":
        return _OnnxModel(artifact.path)
    if artifact.format == "joblib":
        try:
            import joblib
        except ImportError as exc:
            raise ConfigError(f"Loading {artifact.path} needs joblib ({exc}); install it with "
                              "pip install 'shipyard[lifecycle]'.") from None
        return joblib.load(artifact.path)
    with artifact.path.open("rb") as handle:
        return pickle.load(handle)


class _OnnxModel:
    """An ONNX model with scikit-learn's call style (skl2onnx's outputs: label, then
    probabilities as a list of dicts or a tensor)."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise ConfigError(f"Loading {path} needs onnxruntime ({exc}); install it with "
                              "pip install 'shipyard[onnx]'.") from None
        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.classes_: list[Any] | None = None

    def _run(self, rows: Any) -> list[Any]:
        import numpy as np

        return list(self.session.run(None, {self.input: np.asarray(rows, dtype=np.float32)}))

    def predict(self, rows: Any) -> Any:
        return self._run(rows)[0]

    def predict_proba(self, rows: Any) -> Any:
        import numpy as np

        out = self._run(rows)
        probabilities = out[1] if len(out) > 1 else out[0]
        if isinstance(probabilities, list) and probabilities and isinstance(
                probabilities[0], dict):
            self.classes_ = sorted(probabilities[0])
            return np.asarray([[row[c] for c in self.classes_] for row in probabilities])
        return np.asarray(probabilities)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON-ready Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return value


class ModelCaller:
    """Calls a loaded model the built-in way. The input is `{"features": [...]}`: one row
    (a list of numbers) or several (a list of lists). One row answers one result, several a
    list: `{"prediction": label}` with `predict`, plus `"probabilities": {class: p}` with
    `predict_proba`."""

    def __init__(self, model: Any, call: str, *, name: str = "model") -> None:
        method = getattr(model, call, None)
        if not callable(method):
            available = [m for m in ("predict", "predict_proba")
                         if callable(getattr(model, m, None))]
            raise ConfigError(f"The model of '{name}' has no {call}() method; set 'call' to "
                              f"one it has ({', '.join(available) or 'none'}).")
        self.model = model
        self.call = call
        self.name = name

    def rows(self, data: Any) -> tuple[list[list[Any]], bool]:
        """The rows of an input, and whether it was a single row."""
        features = data.get("features") if isinstance(data, dict) else None
        if not isinstance(features, list) or not features:
            raise ValidationFailed(
                "Invalid input: field 'features' is required: a list of numbers (one row) or "
                "a list of such lists, e.g. {\"features\": [1.5, 2.0, 0.3]}.", param="features")
        single = not isinstance(features[0], list)
        return ([features] if single else features), single

    def predict_rows(self, rows: Any) -> list[dict[str, Any]]:
        """Results for many rows in one model call (what `shipyard eval` uses)."""
        if self.call == "predict":
            return [{"prediction": _plain(p)} for p in _plain(self.model.predict(rows))]
        probabilities = self.model.predict_proba(rows)
        raw_classes = getattr(self.model, "classes_", None)
        labels = ([_plain(c) for c in raw_classes] if raw_classes is not None
                  else list(range(len(probabilities[0]))))
        names = [str(c) for c in labels]
        out = []
        for row in _plain(probabilities):
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"prediction": labels[best],
                        "probabilities": {c: float(p) for c, p in zip(names, row, strict=True)}})
        return out

    def scores(self, rows: Any) -> tuple[Any, Any]:
        """(labels, probabilities or None) for many rows as arrays: one model call, no
        per-row objects (what `shipyard eval` uses on large datasets)."""
        if self.call == "predict":
            return self.model.predict(rows), None
        import numpy as np

        probabilities = np.asarray(self.model.predict_proba(rows))
        classes = getattr(self.model, "classes_", None)
        if classes is None:
            classes = np.arange(probabilities.shape[1])
        return np.asarray(classes)[probabilities.argmax(axis=1)], probabilities

    def classes(self) -> list[Any]:
        classes = getattr(self.model, "classes_", None)
        return [_plain(c) for c in classes] if classes is not None else []

    def check(self, data: Any) -> tuple[list[list[Any]], bool]:
        """The rows of a valid input, or 422 naming the field and the fix."""
        rows, single = self.rows(data)
        expected = getattr(self.model, "n_features_in_", None)
        for i, row in enumerate(rows):
            if not isinstance(row, list) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in row):
                raise ValidationFailed(f"Invalid input: field 'features[{i}]' must be a list "
                                       "of numbers.", param=f"features[{i}]")
            if isinstance(expected, int) and len(row) != expected:
                raise ValidationFailed(
                    f"Invalid input: field 'features' has {len(row)} values in row {i}; the "
                    f"model of '{self.name}' takes {expected}.", param="features")
        return rows, single

    def __call__(self, data: Any) -> Any:
        rows, single = self.check(data)
        results = self.predict_rows(rows)
        return results[0] if single else results
