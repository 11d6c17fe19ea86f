"""`Idempotency-Key` on a real `shipyard serve` with `shipyard sim` upstream: a repeated key
returns the first answer without calling the upstream again, a different body under the
same key is a 409 naming the header, keys are per tenant, and job creation returns the job
the key first created."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai

from conftest import API_KEY, Proc, gateway_config


def _sim_calls(sim: Proc, route: str) -> int:
    stats = httpx.get(f"{sim.url}/_sim/stats").json()
    return sum(int(n) for key, n in stats.items() if route in key)


def test_idempotency_keys(start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
                          tmp_path: Path) -> None:
    sim = start_sim()
    gateway = start_gateway(gateway_config(sim.port, f"sqlite:///{tmp_path}/store.db",
                                           extra="""
services:
  classify: {function: "sample_services:classify",
             input_schema: {type: object, required: [text]}}
  sleeper: {function: "sample_services:slow_async"}
jobs: {targets: {sleeper: {concurrency: 1}}}
work: {poll_interval_s: 0.1}
"""))
    admin = {"authorization": f"Bearer {API_KEY}"}
    assert httpx.post(f"{gateway.url}/v1/admin/tenants", json={"id": "acme"},
                      headers=admin).status_code == 201
    made = httpx.post(f"{gateway.url}/v1/admin/keys", params={"tenant": "acme"},
                      json={"role": "client", "name": "acme app"}, headers=admin)
    acme = {"authorization": f"Bearer {made.json()['secret']}"}
    acme_key_id = made.json()["id"]

    def post(path: str, body: Any, key: str, headers: dict[str, str] = admin) -> httpx.Response:
        return httpx.post(f"{gateway.url}{path}", json=body, timeout=30,
                          headers={**headers, "Idempotency-Key": key})

    chat = {"model": "demo", "messages": [{"role": "user", "content": "charge my card once"}]}
    before = _sim_calls(sim, "chat")
    first = post("/v1/chat/completions", chat, "order-1")
    again = post("/v1/chat/completions", chat, "order-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert _sim_calls(sim, "chat") == before + 1  # the upstream ran once

    changed = post("/v1/chat/completions", {**chat, "temperature": 0.5}, "order-1")
    assert changed.status_code == 409
    error = changed.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    assert "order-1" in error["message"] and "new key" in error["message"]

    other = post("/v1/chat/completions", chat, "order-1", headers=acme)  # another tenant
    assert other.status_code == 200 and "idempotent-replayed" not in other.headers
    assert other.json()["id"] != first.json()["id"]

    embed = {"model": "demo-embed", "input": "hello"}
    assert post("/v1/embeddings", embed, "e-1").json() == post(
        "/v1/embeddings", embed, "e-1").json()
    invoke = post("/v1/services/classify/invoke", {"text": "refund me"}, "s-1")
    replay = post("/v1/services/classify/invoke", {"text": "refund me"}, "s-1")
    assert replay.json() == invoke.json() and replay.headers["idempotent-replayed"] == "true"
    responses = post("/v1/responses", {"model": "demo", "input": "hi"}, "r-1")
    assert post("/v1/responses", {"model": "demo", "input": "hi"}, "r-1").json()[
        "id"] == responses.json()["id"]
    # A client error is an answer too (kept); a stream cannot be replayed (refused).
    bad = post("/v1/services/classify/invoke", {"nope": 1}, "s-2")
    assert bad.status_code == 422 and post("/v1/services/classify/invoke", {"nope": 1},
                                           "s-2").headers["idempotent-replayed"] == "true"
    streamed = post("/v1/chat/completions", {**chat, "stream": True}, "st-1")
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == (
        "Idempotency-Key")
    assert post("/v1/chat/completions", chat, "bad key with spaces").status_code == 400

    # Job creation: the same key returns the same job, even after it ran.
    job = post("/v1/services/classify/jobs", {"text": "refund"}, "job-1")
    assert job.status_code == 202
    same = post("/v1/services/classify/jobs", {"text": "refund"}, "job-1")
    assert same.status_code == 200 and same.json()["id"] == job.json()["id"]
    assert same.headers["idempotent-replayed"] == "true"
    assert post("/v1/services/classify/jobs", {"text": "other"}, "job-1").status_code == 409
    done = httpx.get(f"{gateway.url}/v1/jobs/{job.json()['id']}", params={"wait": 20},
                     headers=admin).json()
    assert done["status"] == "succeeded" and done["result"]["output"]["label"] == "complaint"
    assert post("/v1/services/classify/jobs", {"text": "refund"}, "job-1").json()[
        "status"] == "succeeded"
    # The acme key cannot see the default tenant's job.
    assert httpx.get(f"{gateway.url}/v1/jobs/{job.json()['id']}",
                     headers=acme).status_code == 404

    # The official SDK passes the header through unchanged.
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0) as sdk:
        one = sdk.chat.completions.create(model="demo", messages=[{"role": "user",
                                          "content": "sdk"}],
                                          extra_headers={"Idempotency-Key": "sdk-1"})
        two = sdk.chat.completions.create(model="demo", messages=[{"role": "user",
                                          "content": "sdk"}],
                                          extra_headers={"Idempotency-Key": "sdk-1"})
    assert one.id == two.id

    # A job runs with its creator's key: revoked meanwhile, the job is dead-lettered.
    running = post("/v1/services/sleeper/jobs", {"seconds": 2}, "slow-1", headers=acme).json()
    waiting = post("/v1/services/sleeper/jobs", {"seconds": 0}, "slow-2", headers=acme).json()
    revoked = httpx.post(f"{gateway.url}/v1/admin/keys/{acme_key_id}/revoke",
                         params={"tenant": "acme"}, headers=admin)
    assert revoked.status_code == 200, revoked.text
    ended = {j["id"]: httpx.get(f"{gateway.url}/v1/jobs/{j['id']}",
                                params={"wait": 20, "tenant": "acme"}, headers=admin).json()
             for j in (running, waiting)}
    assert ended[running["id"]]["status"] == "succeeded"  # it started before the revocation
    dead = ended[waiting["id"]]
    assert dead["status"] == "dead" and dead["error"]["status_code"] == 401
    assert "revoked" in dead["error"]["message"] and dead["attempts"] == 1
