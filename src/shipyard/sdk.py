"""For code that Shipyard hosts: what a service function returns and how it calls back.

- `Result`: return it from a service function to hand over, beside the output, the retrieved
  passages (`context`) and `citations` the answer is based on. Output guards check the answer
  against that context (`grounding`), so a RAG function that retrieves inside itself is
  checked like one that receives its documents.
- `client()` / `async_client()`: an `openai` SDK client pointed at the gateway that runs the
  service. Calls made with it inside a service carry the service's trace (`traceparent`), so
  they show as children of the invocation in the trace waterfall.

>>> def answer(question: dict) -> Result:
...     passages = ["Refunds are issued within 14 days."]
...     return Result(output={"answer": "Within 14 days [1]."}, context=passages)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.config import env
from shipyard.errors import ConfigError
from shipyard.pipeline.context import Invocation, invocation

__all__ = ["Result", "async_client", "client", "current_invocation"]

_DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


@dataclass(slots=True)
class Result:
    """A service's answer with what it was based on.

    `output` is what the caller gets (any JSON value or a pydantic model); `context` the
    passages the answer used (strings); `citations` whatever identifies them (ids, URLs) —
    recorded on the trace.
    """

    output: Any
    context: list[str] = field(default_factory=list)
    citations: list[Any] = field(default_factory=list)


def current_invocation() -> Invocation | None:
    """The invocation this code runs in (None outside a hosted service)."""
    return invocation.get()


def _settings(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    current = invocation.get()
    key = api_key or (current.api_key if current else None) or env.get("SHIPYARD_API_KEY")
    if not key:
        raise ConfigError(
            "shipyard.client() has no API key: set 'gateway_key' on the service in "
            "shipyard.yaml (e.g. gateway_key: {$env: SUPPORT_KEY}), export SHIPYARD_API_KEY, "
            "or pass api_key=...")
    url = (base_url or (current.base_url if current else None)
           or env.get("SHIPYARD_BASE_URL") or _DEFAULT_BASE_URL)
    return key, url


def _traceparent(request: Any) -> None:
    current = invocation.get()
    if current is not None and "traceparent" not in request.headers:
        request.headers["traceparent"] = current.traceparent


async def _traceparent_async(request: Any) -> None:
    _traceparent(request)


def client(*, api_key: str | None = None, base_url: str | None = None, **options: Any) -> Any:
    """An `openai.OpenAI` client for the gateway this service runs in (needs `openai`)."""
    try:
        import openai
    except ImportError as exc:  # optional: only services that call back need the SDK
        raise ConfigError(f"shipyard.client() needs the openai SDK ({exc}); install it with "
                          "pip install openai") from None
    key, url = _settings(api_key, base_url)
    http = openai.DefaultHttpxClient(event_hooks={"request": [_traceparent]})
    return openai.OpenAI(api_key=key, base_url=url, http_client=http, **options)


def async_client(*, api_key: str | None = None, base_url: str | None = None,
                 **options: Any) -> Any:
    """An `openai.AsyncOpenAI` client for the gateway this service runs in."""
    try:
        import openai
    except ImportError as exc:
        raise ConfigError(f"shipyard.async_client() needs the openai SDK ({exc}); install it "
                          "with pip install openai") from None
    key, url = _settings(api_key, base_url)
    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [_traceparent_async]})
    return openai.AsyncOpenAI(api_key=key, base_url=url, http_client=http, **options)
