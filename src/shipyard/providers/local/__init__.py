"""`kind: local`: a GGUF model run by llama.cpp in managed worker processes (the `local` extra).

The gateway side (`provider`, `pool`) never imports llama.cpp; only the worker process
(`worker`, `engine`) does, and `chat` holds the model-free chat plumbing both can test.
"""

from __future__ import annotations

from shipyard.providers.local.provider import (
    DEFAULT_MODEL,
    INSTALL_HINT,
    LocalProvider,
    default_model_path,
)

__all__ = ["DEFAULT_MODEL", "INSTALL_HINT", "LocalProvider", "default_model_path"]
