"""The OpenAI-compatible Files and Batch APIs, driven end to end by the official `openai` SDK
against a real `shipyard serve` with `shipyard sim` upstream: chat, embeddings and a hosted
service, a line that fails (in the error file), a batch that fails validation, cancellation
and expiry, listing, and deleting files."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import API_KEY, Proc, gateway_config, launch_gateway, launch_sim


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    folder = tmp_path_factory.mktemp("batch")
    sim = launch_sim(folder)
    config = gateway_config(sim.port, f"sqlite:///{folder}/store.db", extra="""
services:
  classify: {function: "sample_services:classify",
             input_schema: {type: object, required: [text]}}
work: {lease_s: 5, poll_interval_s: 0.1}
batches:
  line_concurrency: 4
  checkpoint_s: 0.2
  completion_windows: ["24h", "3s"]
""")
    gateway = launch_gateway(folder, config)
    yield sim, gateway
    gateway.stop()
    sim.stop()


_OPEN: list[openai.OpenAI] = []


def _client(gateway: Proc, key: str = API_KEY) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    _OPEN.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _jsonl(lines: list[dict[str, Any]]) -> io.BytesIO:
    data = io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    data.name = "requests.jsonl"
    return data


def _wait(client: openai.OpenAI, batch_id: str, done: tuple[str, ...] = (
        "completed", "failed", "expired", "cancelled"), timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in done:
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_chat_batch_with_a_failing_line(servers: tuple[Proc, Proc]) -> None:
    _, gateway = servers
    client = _client(gateway)
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "demo" if i != 7 else "no-such-model",
                       "messages": [{"role": "user", "content": f"question {i}"}]}}
             for i in range(20)]
    uploaded = client.files.create(file=_jsonl(lines), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"team": "search"})
    assert batch.status == "validating" and batch.metadata == {"team": "search"}
    batch = _wait(client, batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed,
            batch.request_counts.failed) == (20, 19, 1)
    output = _lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(20) if i != 7]
    for line in output:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert line["response"]["body"]["choices"][0]["message"]["content"]
        assert line["id"].startswith("batch_req_")
    [failed] = _lines(client, batch.error_file_id)
    assert failed["custom_id"] == "req-7" and failed["response"]["status_code"] == 404
    assert "no-such-model" in failed["error"]["message"]
    # Each line went through the chain: a trace per line, on route "batch".
    deadline = time.monotonic() + 20  # traces are written off the hot path
    while True:
        traces = httpx.get(f"{gateway.url}/v1/traces", params={"limit": 100},
                           headers={"authorization": f"Bearer {API_KEY}"}).json()["data"]
        if sum(1 for t in traces if t["route"] == "batch") >= 20:
            break
        assert time.monotonic() < deadline, traces
        time.sleep(0.1)
    assert batch.id in {b.id for b in client.batches.list(limit=100)}
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_embeddings_and_service_batches(servers: tuple[Proc, Proc]) -> None:
    _, gateway = servers
    client = _client(gateway)
    embed = client.files.create(file=_jsonl([
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "demo-embed", "input": f"text {i}"}} for i in range(5)]),
        purpose="batch")
    batch = _wait(client, client.batches.create(
        input_file_id=embed.id, endpoint="/v1/embeddings", completion_window="24h").id)
    assert batch.status == "completed" and batch.error_file_id is None
    output = _lines(client, batch.output_file_id)
    assert len(output) == 5
    assert all(len(o["response"]["body"]["data"][0]["embedding"]) > 8 for o in output)

    service = client.files.create(file=_jsonl([
        {"custom_id": "a", "method": "POST", "url": "/v1/services/classify/invoke",
         "body": {"text": "I want a refund"}},
        {"custom_id": "b", "method": "POST", "url": "/v1/services/classify/invoke",
         "body": {"text": "How do I log in?"}},
        {"custom_id": "c", "method": "POST", "url": "/v1/services/classify/invoke",
         "body": {"wrong": "field"}}]), purpose="batch")
    batch = _wait(client, client.batches.create(
        input_file_id=service.id, endpoint="/v1/services/classify/invoke",
        completion_window="24h").id)
    assert batch.status == "completed"
    labels = {o["custom_id"]: o["response"]["body"]["output"]["label"]
              for o in _lines(client, batch.output_file_id)}
    assert labels == {"a": "complaint", "b": "question"}
    [bad] = _lines(client, batch.error_file_id)
    assert bad["custom_id"] == "c" and bad["response"]["status_code"] == 422


def test_invalid_input_fails_the_batch(servers: tuple[Proc, Proc]) -> None:
    _, gateway = servers
    client = _client(gateway)
    data = io.BytesIO(b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", '
                      b'"body": {"model": "demo", "messages": []}}\nnot json\n')
    data.name = "bad.jsonl"
    upload = client.files.create(file=data, purpose="batch")
    batch = _wait(client, client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    codes = [(e.code, e.line) for e in batch.errors.data]
    assert codes == [("mismatched_endpoint", 1), ("invalid_json_line", 2)]
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                              completion_window="48h")  # type: ignore[arg-type]
    assert "completion_window" in str(refused.value)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_cancel_and_expiry(servers: tuple[Proc, Proc]) -> None:
    sim, gateway = servers
    client = _client(gateway)
    httpx.patch(f"{sim.url}/_sim/faults", json={"latency": "150"}).raise_for_status()
    try:
        lines = [{"custom_id": f"s{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "demo", "messages": [{"role": "user",
                                                          "content": f"slow {i}"}]}}
                 for i in range(200)]
        upload = client.files.create(file=_jsonl(lines), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id,
                                      endpoint="/v1/chat/completions",
                                      completion_window="24h")
        _wait(client, batch.id, done=("in_progress",))
        time.sleep(0.6)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        cancelled = _wait(client, batch.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at
        assert cancelled.request_counts is not None
        assert 0 < cancelled.request_counts.completed < 200
        assert len(_lines(client, cancelled.output_file_id)) == (
            cancelled.request_counts.completed)
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)

        expiring = client.batches.create(input_file_id=upload.id,
                                         endpoint="/v1/chat/completions",
                                         completion_window="3s")  # type: ignore[arg-type]
        expired = _wait(client, expiring.id)
        assert expired.status == "expired" and expired.expired_at
        counts = expired.request_counts
        assert counts is not None and counts.completed > 0
        assert counts.completed + counts.failed == 200
        errors = _lines(client, expired.error_file_id)
        assert len(errors) == counts.failed
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
        done = {o["custom_id"] for o in _lines(client, expired.output_file_id)}
        assert done.isdisjoint({e["custom_id"] for e in errors})
    finally:
        httpx.patch(f"{sim.url}/_sim/faults", json={"latency": "0"}).raise_for_status()


def test_files_list_retrieve_delete(servers: tuple[Proc, Proc]) -> None:
    _, gateway = servers
    client = _client(gateway)
    made = client.files.create(file=_jsonl([{"custom_id": "1"}]), purpose="batch")
    assert client.files.retrieve(made.id).filename == "requests.jsonl"
    assert made.id in {f.id for f in client.files.list(purpose="batch")}
    assert client.files.content(made.id).text.strip() == '{"custom_id": "1"}'
    deleted = client.files.delete(made.id)
    assert deleted.deleted and deleted.id == made.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(made.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=_jsonl([]), purpose="fine-tune")
    assert "purpose" in str(refused.value)


def test_another_tenant_sees_nothing(servers: tuple[Proc, Proc], tmp_path: Path) -> None:
    _, gateway = servers
    admin = {"authorization": f"Bearer {API_KEY}"}
    httpx.post(f"{gateway.url}/v1/admin/tenants", json={"id": "other"}, headers=admin)
    made = httpx.post(f"{gateway.url}/v1/admin/keys", params={"tenant": "other"},
                      json={"role": "client", "name": "other"}, headers=admin)
    assert made.status_code == 201, made.text
    other = _client(gateway, made.json()["secret"])
    mine = _client(gateway).files.create(file=_jsonl([{"custom_id": "1"}]), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(mine.id)
    assert mine.id not in {f.id for f in other.files.list()}
