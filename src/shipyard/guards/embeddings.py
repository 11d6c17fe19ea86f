"""Attack similarity with sentence embeddings, when an embedding model is installed locally.

Optional: needs `sentence-transformers` and a model available offline (a local folder, or a
package that ships one). Nothing is downloaded: the model is loaded with
`local_files_only=True`, and a missing model fails at startup with what to install.

    {guard: injection, embeddings: true}                       # the default model name
    {guard: injection, embeddings: /models/all-MiniLM-L6-v2}   # a local folder
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shipyard.errors import ConfigError
from shipyard.guards.features import need_numpy

__all__ = ["DEFAULT_MODEL", "EmbeddingSimilarity"]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingSimilarity:
    """Highest cosine between a text's embedding and the embeddings of known attacks."""

    def __init__(self, attacks: Sequence[str], *, model: str = DEFAULT_MODEL) -> None:
        need_numpy("Embedding similarity")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(
                "The injection guard's 'embeddings' option needs sentence-transformers and a "
                "local embedding model; install them (pip install sentence-transformers, plus "
                "a packaged model) or remove 'embeddings'.") from None
        try:
            self.model: Any = SentenceTransformer(model, local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"The embedding model '{model}' cannot be loaded offline "
                              f"({type(exc).__name__}); give a local folder as 'embeddings'."
                              ) from None
        self.matrix = self.model.encode(list(attacks), normalize_embeddings=True)

    def score(self, text: str) -> float:
        vector = self.model.encode([text], normalize_embeddings=True)[0]
        return float((self.matrix @ vector).max())
