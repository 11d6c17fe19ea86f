"""`kind: azure` — Azure OpenAI: the OpenAI wire format at Azure's URLs, with Azure's auth.

- URL: `{base_url}/openai/deployments/{deployment}/{endpoint}?api-version=...`, the
  deployment taken from `deployments` (model → deployment) or the model name itself; with
  `api_version: v1`, Azure's v1 API `{base_url}/openai/v1/{endpoint}` (model in the body).
- Auth: `api-key: KEY`, or `Authorization: Bearer TOKEN` with a Microsoft Entra ID token.
Bodies and streams pass through untouched, as for `kind: openai`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from shipyard.config.targets import DEFAULT_API_VERSIONS, ProviderConfig
from shipyard.pipeline import Endpoint
from shipyard.providers.openai import OpenAIProvider

__all__ = ["AzureProvider"]


class AzureProvider(OpenAIProvider):
    kind = "azure"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.base_url = self.base_url.removesuffix("/openai")
        version = config.api_version or DEFAULT_API_VERSIONS["azure"]
        self.v1 = version == "v1"
        self._query = None if self.v1 else {"api-version": version}
        self._headers.pop("authorization", None)
        if config.api_key is not None:
            self._headers["api-key"] = config.api_key.get_secret_value()
        elif config.entra_token is not None:
            self._headers["authorization"] = f"Bearer {config.entra_token.get_secret_value()}"
        self.deployments = dict(config.deployments)

    def url(self, endpoint: Endpoint, payload: dict[str, Any]) -> str:
        if self.v1:
            return f"{self.base_url}/openai/v1/{endpoint}"
        model = str(payload.get("model", ""))
        deployment = quote(self.deployments.get(model, model), safe="")
        return f"{self.base_url}/openai/deployments/{deployment}/{endpoint}"
