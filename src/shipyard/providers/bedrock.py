"""`kind: bedrock` — Amazon Bedrock's Converse API, translated to and from OpenAI chat by
`shipyard.providers.formats.bedrock`.

`POST {base_url}/model/{modelId}/converse`, streams from `/converse-stream` in AWS's binary
event-stream framing. Requests are signed with AWS Signature Version 4 by botocore (the
`bedrock` extra: `pip install 'shipyard[bedrock]'`) — no hand-written crypto — using the
configured credentials; a Bedrock API key (`api_key`) is sent as a bearer token instead.
botocore also decodes the event stream, checking each message's CRCs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
from pydantic import SecretStr

from shipyard.config.targets import ProviderConfig
from shipyard.errors import ConfigError, UpstreamUnavailable
from shipyard.providers.formats import bedrock as wire
from shipyard.providers.formats.openai import ChunkWriter
from shipyard.providers.translating import Prepared, StreamState, TranslatingProvider

__all__ = ["BedrockProvider", "Signer"]

INSTALL_HINT = "pip install 'shipyard[bedrock]'"


class Signer:
    """AWS Signature Version 4 for one service and region, by botocore's `SigV4Auth`.

    >>> signer = Signer("AKIDEXAMPLE", "secret", None, region="us-east-1")  # doctest: +SKIP
    >>> signer.sign("POST", "https://host/model/m/converse", {}, b"{}")  # doctest: +SKIP
    """

    def __init__(self, access_key: str, secret_key: str, token: str | None, *, region: str,
                 service: str = "bedrock") -> None:
        try:  # the optional extra, needed only by this kind
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
        except ImportError as exc:
            raise ConfigError(f"Providers of kind 'bedrock' sign requests with botocore, which "
                              f"is not installed ({exc}); run: {INSTALL_HINT}") from None
        self._auth = SigV4Auth(Credentials(access_key, secret_key, token), service, region)
        self._request = AWSRequest

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes
             ) -> dict[str, str]:
        """The headers to send: `headers` plus `X-Amz-Date`, `Authorization` and, with
        temporary credentials, `X-Amz-Security-Token`."""
        request = self._request(method=method, url=url, data=body, headers=headers)
        self._auth.add_auth(request)
        return dict(request.headers.items())


class BedrockProvider(TranslatingProvider):
    kind = "bedrock"
    credentials_key = "aws_access_key_id"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        region = config.region or ""
        self.base_url = (config.base_url
                         or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/")
        try:
            from botocore.eventstream import EventStreamBuffer
        except ImportError as exc:
            raise ConfigError(f"Providers of kind 'bedrock' need botocore ({exc}); run: "
                              f"{INSTALL_HINT}") from None
        self._buffer = EventStreamBuffer
        self.signer: Signer | None = None
        if config.api_key is not None:
            self.credentials_key = "api_key"
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        else:
            token = config.aws_session_token
            self.signer = Signer(
                (config.aws_access_key_id or SecretStr("")).get_secret_value(),
                (config.aws_secret_access_key or SecretStr("")).get_secret_value(),
                token.get_secret_value() if token is not None else None, region=region)

    def prepare(self, payload: dict[str, Any], *, stream: bool) -> Prepared:
        model = quote(str(payload.get("model", "")), safe="")
        action = "converse-stream" if stream else "converse"
        return Prepared(f"{self.base_url}/model/{model}/{action}",
                        orjson.dumps(wire.to_converse(payload)), {}, payload,
                        json_tool=wire.forced_json_tool(payload))

    def sign(self, prepared: Prepared) -> None:
        if self.signer is None:
            return
        # Sign every header that will be sent (the session's defaults included), so what
        # arrives is exactly what was signed.
        headers = {**self._headers, **prepared.headers}
        prepared.headers = self.signer.sign("POST", prepared.url, headers, prepared.body)

    def answer(self, data: Any, prepared: Prepared) -> dict[str, Any]:
        return wire.from_converse(data, model=str(prepared.payload.get("model", "")),
                                  json_tool=prepared.json_tool)

    async def read_stream(self, source: AsyncIterator[bytes], prepared: Prepared,
                          writer: ChunkWriter, state: StreamState
                          ) -> AsyncIterator[dict[str, Any]]:
        reader = wire.StreamReader(writer, json_tool=prepared.json_tool, provider=self.name)
        buffer = self._buffer()
        async for data in source:
            buffer.add_data(data)
            try:
                messages = list(buffer)
            except Exception as exc:  # botocore's ParserError family: a corrupt frame
                raise UpstreamUnavailable(
                    f"The upstream '{self.name}' sent a corrupt event-stream frame "
                    f"({type(exc).__name__}); the stream was ended.") from None
            for message in messages:
                headers = message.headers
                try:
                    body = orjson.loads(message.payload) if message.payload else {}
                except orjson.JSONDecodeError:
                    raise UpstreamUnavailable(
                        f"The upstream '{self.name}' sent a malformed stream event; the "
                        "stream was ended.") from None
                kind = headers.get(":message-type")
                if kind == "exception":
                    raise reader.exception(str(headers.get(":exception-type")), body)
                if kind == "error":
                    raise reader.exception(str(headers.get(":error-code")),
                                           {"message": headers.get(":error-message")})
                for chunk in reader.feed(str(headers.get(":event-type")), body):
                    yield chunk
        state.usage, state.done = reader.usage, reader.done

    def error_text(self, body: bytes, headers: Any) -> tuple[str, str | None]:
        kind = str(headers.get("x-amzn-errortype", "")).split(":")[0] or None
        message = wire.error_message(body)
        return (f"{kind}: {message}" if kind else message, kind)
