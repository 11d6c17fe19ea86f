"""Upstream providers, one kind per module: OpenAI-compatible HTTP (`openai`, `azure`), the
translating kinds (`anthropic`, `gemini`, `bedrock`, `ollama`), Python callables, the
simulated model, and local GGUF models (`local`: llama.cpp in worker processes). The kinds are
declared once in `shipyard.config.targets.ProviderKind`."""

from __future__ import annotations

from collections.abc import Callable

from shipyard.config.targets import ProviderConfig
from shipyard.providers.anthropic import AnthropicProvider
from shipyard.providers.azure import AzureProvider
from shipyard.providers.base import Provider
from shipyard.providers.bedrock import BedrockProvider
from shipyard.providers.gemini import GeminiProvider
from shipyard.providers.local import LocalProvider
from shipyard.providers.ollama import OllamaProvider
from shipyard.providers.openai import OpenAIProvider
from shipyard.providers.python import PythonProvider
from shipyard.providers.sim import SimProvider

__all__ = ["KINDS", "STREAM_USAGE_KINDS", "Provider", "build_provider"]

KINDS: dict[str, Callable[[str, ProviderConfig], Provider]] = {
    "openai": OpenAIProvider,
    "python": PythonProvider,
    "sim": SimProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "azure": AzureProvider,
    "bedrock": BedrockProvider,
    "ollama": OllamaProvider,
    "local": LocalProvider,
}
# Kinds whose streams report usage when the request has `stream_options.include_usage`
# (failover asks for it so cost is exact, and drops the event the client did not ask for).
STREAM_USAGE_KINDS = frozenset({"openai", "azure", "anthropic", "gemini", "bedrock", "ollama",
                                "local"})


def build_provider(name: str, config: ProviderConfig) -> Provider:
    """Create the provider for one `providers.NAME` entry."""
    return KINDS[config.kind](name, config)
