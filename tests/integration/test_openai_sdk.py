"""The official `openai` SDK against a real `shipyard serve` in front of a real `shipyard sim`."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import create_engine

from conftest import API_KEY, Proc, gateway_config, launch_gateway, launch_sim
from shipyard.store import TraceFilter, iter_traces


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("stack")
    sim = launch_sim(folder)
    store = f"sqlite:///{folder}/store.db"
    try:
        gateway = launch_gateway(folder, gateway_config(sim.port, store))
        try:
            yield {"sim": sim, "gateway": gateway, "store": store}
        finally:
            gateway.stop()
    finally:
        sim.stop()


@pytest.fixture
def client(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['gateway'].url}/v1", api_key=API_KEY, max_retries=0)


def set_faults(sim: Proc, **knobs: Any) -> None:
    request = urllib.request.Request(f"{sim.url}/_sim/faults", method="PUT",
                                     data=json.dumps(knobs).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def traces_for(store: str, request_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    engine = create_engine(store)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            rows = [r for r in iter_traces(engine, TraceFilter(), limit=500)
                    if r["request_id"] == request_id]
            if rows:
                return rows
            time.sleep(0.05)
        return []
    finally:
        engine.dispose()


HELLO = [{"role": "user", "content": "Hello there"}]


def test_chat_completion(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=HELLO)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.request_id and raw.request_id.startswith("req_")
    assert float(raw.headers["x-shipyard-overhead-ms"]) >= 0
    assert raw.headers["x-shipyard-model"] == "demo"
    [trace] = traces_for(stack["store"], raw.request_id)
    assert trace["status"] == 200
    assert trace["model_alias"] == "demo" and trace["upstream_model"] == "sim-chat"
    assert trace["provider"] == "sim" and trace["route"] == "chat"
    assert trace["prompt_tokens"] == completion.usage.prompt_tokens
    assert trace["completion_tokens"] == completion.usage.completion_tokens
    assert not trace["tokens_estimated"]
    assert trace["upstream_ms"] > 0 and trace["total_ms"] >= trace["upstream_ms"]
    assert trace["finish_reason"] == "stop"
    assert trace["capture"] == "metadata" and trace["request_body"] is None
    assert trace["key_id"].startswith("key-") and API_KEY not in json.dumps(trace, default=str)


def test_client_request_id_is_echoed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=HELLO, extra_headers={"x-request-id": "my-own-id-123"})
    assert raw.request_id == "my-own-id-123"


def test_stream_with_usage(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=HELLO, stream=True, stream_options={"include_usage": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-accel-buffering"] == "no"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == client.chat.completions.create(
        model="demo", messages=HELLO).choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    [trace] = traces_for(stack["store"], raw.request_id)
    assert trace["stream"] and trace["status"] == 200
    assert trace["ttft_ms"] is not None and trace["ttft_ms"] <= trace["total_ms"]
    assert trace["total_tokens"] == chunks[-1].usage.total_tokens


def test_stream_without_usage_still_counts_tokens(client: openai.OpenAI,
                                                   stack: dict[str, Any]) -> None:
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=HELLO,
                                                           stream=True)
    chunks = list(raw.parse())
    # The client did not ask for usage, so it gets none...
    assert all(c.choices for c in chunks)
    # ...but Shipyard asked the upstream for it and recorded exact counts.
    [trace] = traces_for(stack["store"], raw.request_id)
    assert trace["total_tokens"] > 0 and not trace["tokens_estimated"]


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="demo-embed", input=["first text", "second"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 64
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens > 0
    one = client.embeddings.create(model="demo-embed", input="first text", dimensions=8)
    assert len(one.data[0].embedding) == 8


def test_embeddings_base64_via_sdk_default(client: openai.OpenAI) -> None:
    # Recent SDKs ask for base64 and decode it themselves.
    result = client.embeddings.create(model="demo-embed", input="x", encoding_format="base64")
    assert result.data[0].embedding


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["demo", "demo-embed", "demo-full"]
    assert client.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_legacy_completions(client: openai.OpenAI) -> None:
    result = client.completions.create(model="demo", prompt="Say this is a test", max_tokens=5)
    assert result.object == "text_completion"
    assert result.choices[0].text.strip()
    assert result.choices[0].finish_reason == "length"
    stream = client.completions.create(model="demo", prompt="Say this", stream=True)
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert "".join(pieces).strip()



def test_async_client(stack: dict[str, Any]) -> None:
    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=f"{stack['gateway'].url}/v1", api_key=API_KEY,
                                      max_retries=0) as aclient:
            completion = await aclient.chat.completions.create(model="demo", messages=HELLO)
            stream = await aclient.chat.completions.create(model="demo", messages=HELLO,
                                                           stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream
                            if c.choices])
            return completion.choices[0].message.content or "", text

    full, streamed = asyncio.run(run())
    assert full and full == streamed


def test_capture_full_keeps_payloads(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    raw = client.chat.completions.with_raw_response.create(model="demo-full", messages=HELLO)
    [trace] = traces_for(stack["store"], raw.request_id)
    assert "Hello there" in trace["request_body"]
    assert raw.parse().choices[0].message.content in trace["response_body"]


# -- errors -------------------------------------------------------------------------------

def test_unknown_model(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=HELLO)
    error = info.value.body
    assert isinstance(error, dict)
    assert "gpt-nope" in error["message"] and "demo" in error["message"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"


def test_wrong_api_key(stack: dict[str, Any]) -> None:
    bad = openai.OpenAI(base_url=f"{stack['gateway'].url}/v1", api_key="sk-wrong-key-000",
                        max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="demo", messages=HELLO)
    assert "not valid" in str(info.value)
    assert "sk-wrong-key-000" not in str(info.value)


def _http(method: str, url: str, body: bytes | None = None,
          headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, Any]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        conn.request(method, target, body=body, headers={
            **({"authorization": f"Bearer {API_KEY}"} if auth else {}),
            "content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        if response.getheader("content-type", "").startswith("application/json"):
            return response.status, json.loads(data) if data else None
        return response.status, data.decode(errors="replace")
    finally:
        conn.close()


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return _http("POST", url, body, headers)


def test_bad_bodies_get_specific_errors(stack: dict[str, Any]) -> None:
    url = f"{stack['gateway'].url}/v1/chat/completions"
    status, body = _post(url, b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    assert body["error"]["code"] == "invalid_json"
    status, body = _post(url, b"[1, 2]")
    assert status == 400 and "JSON object, not a JSON array" in body["error"]["message"]
    status, body = _post(url, json.dumps({"model": "demo"}).encode())
    assert status == 400 and body["error"]["param"] == "messages"
    assert "Missing required parameter 'messages'" in body["error"]["message"]
    status, body = _post(url, json.dumps({"model": "demo", "messages": [
        {"role": "wizard", "content": "hi"}]}).encode())
    assert status == 400 and body["error"]["param"] == "messages[0].role"
    assert "'wizard'" in body["error"]["message"]
    status, body = _post(url, json.dumps({"model": "demo", "messages": HELLO,
                                          "temperature": 7}).encode())
    assert status == 400 and body["error"]["param"] == "temperature"


def _raw_exchange(port: int, head: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    """Send a request by hand and read the answer without sending the whole body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_oversized_body_is_refused_early(stack: dict[str, Any]) -> None:
    # Declares 5 MB but sends only 1 KB: the 413 must come without reading the rest.
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n")
    status, body = _raw_exchange(stack["gateway"].port, head, b"{" + b" " * 1023)
    assert status == 413
    message = body["error"]["message"]
    assert "5000000 bytes" in message and "server.max_body_bytes" in message
    assert body["error"]["code"] == "payload_too_large"


def test_oversized_chunked_body(stack: dict[str, Any]) -> None:
    # No Content-Length: the limit is enforced while the body streams in.
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 1_100_000
    status, body = _raw_exchange(stack["gateway"].port, head,
                                 f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    assert status == 413 and "server.max_body_bytes" in body["error"]["message"]


def test_unknown_route_and_method(stack: dict[str, Any]) -> None:
    status, body = _post(f"{stack['gateway'].url}/v1/nothing", b"{}")
    assert status == 404 and "/v1/nothing" in body["error"]["message"]
    status, body = _http("GET", f"{stack['gateway'].url}/v1/chat/completions")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


def test_failed_requests_are_traced(stack: dict[str, Any]) -> None:
    status, _ = _post(f"{stack['gateway'].url}/v1/chat/completions",
                      json.dumps({"model": "demo"}).encode(),
                      headers={"x-request-id": "failing-request-1"})
    assert status == 400
    [trace] = traces_for(stack["store"], "failing-request-1")
    assert trace["status"] == 400 and trace["error_type"] == "InvalidRequest"


# -- upstream faults (sim knobs flipped at run time) ---------------------------------------

@pytest.fixture
def faults(stack: dict[str, Any]) -> Iterator[Proc]:
    sim: Proc = stack["sim"]
    yield sim
    set_faults(sim)  # back to healthy


def test_upstream_500_is_502(client: openai.OpenAI, faults: Proc) -> None:
    set_faults(faults, error_rates={"500": 1.0})
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="demo", messages=HELLO)
    assert info.value.status_code == 502
    assert "HTTP 500" in str(info.value)


def test_upstream_429_passes_retry_after(client: openai.OpenAI, faults: Proc) -> None:
    set_faults(faults, error_rates={"429": 1.0}, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="demo", messages=HELLO)
    assert info.value.response.headers["retry-after"] == "7"


def test_upstream_without_usage_is_estimated(client: openai.OpenAI, faults: Proc,
                                             stack: dict[str, Any]) -> None:
    set_faults(faults, omit_usage=True)
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=HELLO)
    usage = raw.parse().usage
    assert usage is not None and usage.total_tokens > 0
    assert raw.headers["x-shipyard-usage-estimated"] == "true"
    [trace] = traces_for(stack["store"], raw.request_id)
    assert trace["tokens_estimated"] and trace["total_tokens"] == usage.total_tokens
    stream = client.chat.completions.create(model="demo", messages=HELLO, stream=True,
                                            stream_options={"include_usage": True})
    last = list(stream)[-1]
    assert last.usage is not None and last.usage.total_tokens > 0


def test_mid_stream_cut_is_an_error_event(client: openai.OpenAI, faults: Proc,
                                          stack: dict[str, Any]) -> None:
    set_faults(faults, cut_rate=1.0, cut_after_chunks=3)
    received: list[str] = []
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=HELLO,
                                                           stream=True)
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            received.append(chunk.choices[0].delta.content or "")
    assert len(received) >= 1  # some content arrived before the cut
    assert "cut the stream" in str(info.value) or "before it was complete" in str(info.value)
    [trace] = traces_for(stack["store"], raw.request_id)
    assert trace["status"] == 502 and trace["error_type"] == "UpstreamUnavailable"


def test_malformed_upstream_json(client: openai.OpenAI, faults: Proc) -> None:
    set_faults(faults, malformed_rate=1.0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="demo", messages=HELLO)
    assert "malformed JSON" in str(info.value)


def test_connection_reset(client: openai.OpenAI, faults: Proc) -> None:
    set_faults(faults, reset_rate=1.0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="demo", messages=HELLO)
    assert info.value.status_code == 502


def test_upstream_down(tmp_path: Path) -> None:
    from conftest import free_port

    gateway = launch_gateway(tmp_path, gateway_config(free_port(), f"sqlite:///{tmp_path}/s.db"))
    try:
        c = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model="demo", messages=HELLO)
        assert info.value.status_code == 502
        assert "cannot be reached" in str(info.value)
    finally:
        gateway.stop()


def test_metrics_reflect_traffic(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def count() -> float:
        request = urllib.request.Request(f"{stack['gateway'].url}/metrics",
                                         headers={"authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "shipyard_requests":
                return sum(s.value for s in family.samples if s.labels.get("service") == "demo"
                           and s.labels.get("status") == "200" and s.name.endswith("_total"))
        return 0.0

    before = count()
    for _ in range(3):
        client.chat.completions.create(model="demo", messages=HELLO)
    assert count() - before == 3


def test_metrics_need_a_key(stack: dict[str, Any]) -> None:
    status, body = _http("GET", f"{stack['gateway'].url}/metrics", auth=False)
    assert status == 401 and "Bearer" in body["error"]["message"]


def test_probes(stack: dict[str, Any]) -> None:
    with urllib.request.urlopen(f"{stack['gateway'].url}/livez", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    with urllib.request.urlopen(f"{stack['gateway'].url}/readyz", timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "ready" and body["checks"]["store"] is True
