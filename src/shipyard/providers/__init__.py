"""Upstream providers: OpenAI-compatible HTTP, Python callables, the simulated model, and
local GGUF models (llama.cpp in worker processes)."""

from __future__ import annotations

from shipyard.config.targets import ProviderConfig
from shipyard.providers.base import Provider
from shipyard.providers.local import LocalProvider
from shipyard.providers.openai import OpenAIProvider
from shipyard.providers.python import PythonProvider
from shipyard.providers.sim import SimProvider

__all__ = ["Provider", "build_provider"]

_KINDS: dict[str, type[OpenAIProvider] | type[PythonProvider] | type[SimProvider]
             | type[LocalProvider]] = {
    "openai": OpenAIProvider,
    "python": PythonProvider,
    "sim": SimProvider,
    "local": LocalProvider,
}


def build_provider(name: str, config: ProviderConfig) -> Provider:
    """Create the provider for one `providers.NAME` entry."""
    return _KINDS[config.kind](name, config)
