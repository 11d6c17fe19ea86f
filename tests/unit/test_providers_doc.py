"""docs/providers.md: every config block loads as printed, and builds providers that call
the URLs and send the auth the doc promises."""

from __future__ import annotations

from pathlib import Path

from doc_blocks import take
from shipyard.config.loader import parse_config
from shipyard.config.targets import PROVIDER_KINDS
from shipyard.providers import KINDS, build_provider
from shipyard.providers.translating import TranslatingProvider

DOC = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
TAKEN = take("docs/providers.md", lang="yaml")
ENV = {"ANTHROPIC_API_KEY": "sk-ant-x", "GEMINI_API_KEY": "g-x", "AZURE_OPENAI_API_KEY": "az",
       "AWS_ACCESS_KEY_ID": "AKIDX", "AWS_SECRET_ACCESS_KEY": "s", "SHIPYARD_API_KEY": "k" * 32}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _blocks() -> list[str]:
    return [b.text for b in TAKEN]


def test_every_kind_is_registered_and_documented() -> None:
    assert set(KINDS) == set(PROVIDER_KINDS)
    text = DOC.read_text()
    for kind in PROVIDER_KINDS:
        assert f"| `{kind}` |" in text


def test_every_config_block_loads_and_builds(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("entra-token")
    blocks = _blocks()
    assert len(blocks) >= 8
    urls: dict[str, str] = {}
    for block in blocks:
        block = block.replace("/var/run/secrets/azure/token", str(token))
        config = parse_config(block, environ=ENV)
        assert config.models
        for name, provider_config in config.providers.items():
            provider = build_provider(name, provider_config)
            model = next(m.model for m in config.models.values() if m.provider == name)
            payload = {**CHAT, "model": model}
            if provider_config.kind == "local":
                continue  # no URL: a model file run in worker processes (test_local_*)
            if isinstance(provider, TranslatingProvider):
                prepared = provider.prepare(payload, stream=False)
                provider.sign(prepared)
                urls[f"{name}:{provider_config.base_url or ''}"] = prepared.url
            else:
                urls[f"{name}:{provider_config.base_url}"] = provider.url(  # type: ignore[attr-defined]
                    "chat/completions", payload)
    assert urls["anthropic:"] == "https://api.anthropic.com/v1/messages"
    assert urls["gemini:"] == ("https://generativelanguage.googleapis.com/v1beta/models/"
                               "gemini-2.5-flash:generateContent")
    assert urls["bedrock:"] == ("https://bedrock-runtime.us-east-1.amazonaws.com/model/"
                                "us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse")
    assert urls["ollama:http://127.0.0.1:11434"] == "http://127.0.0.1:11434/api/chat"
    assert urls["azure:https://my-resource.openai.azure.com"] == (
        "https://my-resource.openai.azure.com/openai/deployments/prod-gpt-4o/chat/completions")
    assert urls["azure-entra:https://my-resource.openai.azure.com"] == (
        "https://my-resource.openai.azure.com/openai/v1/chat/completions")
    assert urls["bedrock:http://127.0.0.1:9203"].startswith("http://127.0.0.1:9203/model/")
