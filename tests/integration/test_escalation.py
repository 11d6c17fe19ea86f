"""Escalation to a human, end to end: a real `shipyard serve` with a python-provider support
model and service, a real aiohttp process-local receiver for webhooks (and an upstream that
sends `x-shipyard-confidence`), the official `openai` SDK and the `shipyard escalations` CLI."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from aiohttp import web
from sqlalchemy import text
from test_openai_sdk import _http

from conftest import API_KEY, free_port, launch_gateway
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store

SECRET = "whsec-" + "s" * 24


class Receiver:
    """A real HTTP server on 127.0.0.1 in its own thread: the webhook receiver (the first
    delivery is refused with a 503, to prove retries) and an OpenAI-style upstream whose
    answers carry `x-shipyard-confidence`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.attempts = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()

    async def hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        stamp = request.headers.get("x-shipyard-timestamp", "")
        expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("x-shipyard-signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.attempts == 1:
            return web.Response(status=503)  # the sender must retry
        self.events.append(json.loads(body))
        return web.Response(status=204)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        question = body["messages"][-1]["content"]
        score = "0.12" if "unsure" in question else "0.97"
        answer = {"id": "chatcmpl-up", "object": "chat.completion", "created": 0,
                  "model": body["model"],
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": "From upstream"}}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        if body.get("stream"):
            chunk = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0,
                     "model": body["model"], "choices": [{"index": 0, "finish_reason": None,
                                                          "delta": {"content": "From upstream"}}]}
            response = web.StreamResponse(headers={"content-type": "text/event-stream",
                                                   "x-shipyard-confidence": score})
            await response.prepare(request)
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            return response
        return web.json_response(answer, headers={"x-shipyard-confidence": score})

    def of(self, ticket_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["escalation"]["id"] == ticket_id
                and (event is None or e["event"] == event)]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _key(engine: Any, tenant: str, role: str) -> str:
    _, secret = store.create_key(engine, tenant_id=tenant, name=f"{tenant}-{role}", role=role)
    return secret


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("escalation")
    url = f"sqlite:///{folder}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    for tenant in ("acme", "globex"):
        store.create_tenant(engine, tenant)
    keys = {f"{t}:{r}": _key(engine, t, r) for t in ("acme", "globex")
            for r in ("operator", "client", "viewer")}
    keys["acme:client2"] = _key(engine, "acme", "client")
    receiver = Receiver()
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    gateway = launch_gateway(folder, f"""
store: {{url: "{url}"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  py: {{kind: python, function: "escalation_services:support_model"}}
  up: {{kind: openai, base_url: "http://127.0.0.1:{receiver.port}/v1"}}
models:
  support:
    provider: py
    retry: {{attempts: 1}}
    escalation:
      enabled: true
      min_confidence: 0.5
      max_failures: 2
      failure_window_s: 60
      sla_s: 1
      webhook_url: "{hook}"
      webhook_secret: {{$env: HOOK_SECRET}}
      message: "A person from our support team will follow up here shortly (ticket {{id}})."
  scored:
    provider: up
    escalation: {{enabled: true, min_confidence: 0.5, sla_s: 3600}}
  plain: {{provider: py}}
  guarded:
    provider: py
    escalation:
      enabled: true
      sla_s: 3600
      message: "A colleague will look at this with you (ticket {{id}})."
    guards:
      input:
        - {{guard: topics, deny: [fraud], escalate: [fraud]}}
services:
  assist:
    function: "escalation_services:assist"
    escalation:
      enabled: true
      min_confidence: 0.5
      max_failures: 2
      sla_s: 3600
      webhook_url: "{hook}"
      webhook_secret: {{$env: HOOK_SECRET}}
  vetted:
    function: "escalation_services:assist"
    escalation: {{enabled: true, sla_s: 3600}}
    guards:
      input:
        - {{guard: topics, deny: [fraud], escalate: [fraud]}}
""", env={"HOOK_SECRET": SECRET})
    try:
        yield {"gateway": gateway, "keys": keys, "engine": engine, "receiver": receiver,
               "url": url, "folder": folder}
    finally:
        gateway.stop()
        receiver.close()
        engine.dispose()


def call(world: dict[str, Any], method: str, path: str, key: str | None = None,
         body: Any = None, conversation: str | None = None) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {world['keys'].get(key or '', key or API_KEY)}"}
    if conversation is not None:
        headers["x-shipyard-conversation"] = conversation
    data = None if body is None else json.dumps(body).encode()
    return _http(method, f"{world['gateway'].url}{path}", data, headers=headers, auth=False)


def chat(world: dict[str, Any], content: str, conversation: str | None = None,
         key: str | None = None, model: str = "support") -> tuple[int, Any]:
    return call(world, "POST", "/v1/chat/completions", key,
                {"model": model, "messages": [{"role": "user", "content": content}]},
                conversation)


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def cli(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", "escalations", *args,
                           "--store-url", world["url"]], capture_output=True, text=True,
                          timeout=60, env={"COLUMNS": "200", "NO_COLOR": "1",
                                           "PATH": "/usr/bin:/bin",
                                           "PYTHONPATH": ":".join(sys.path)})


def test_user_request_to_answer_to_feedback(world: dict[str, Any]) -> None:
    conversation = "conv-" + uuid.uuid4().hex[:8]
    status, answer = chat(world, "Hi, is my order shipped?", conversation, "acme:client")
    assert status == 200 and "shipyard" not in answer  # a normal answer

    status, answer = chat(world, "This is not helping. I want to talk to a real person; "
                          "mail me at jane.doe@example.com", conversation, "acme:client")
    assert status == 200, answer
    assert answer["object"] == "chat.completion"
    escalation = answer["shipyard"]["escalation"]
    ticket_id = escalation["id"]
    assert escalation["status"] == "open" and escalation["trigger"] == "user_request"
    assert answer["choices"][0]["message"]["content"] == (
        f"A person from our support team will follow up here shortly (ticket {ticket_id}).")

    # Asking again while the ticket waits keeps the same ticket.
    status, again = chat(world, "Hello? I want a real person!", conversation, "acme:client")
    assert status == 200 and again["shipyard"]["escalation"]["id"] == ticket_id

    # The ticket, with the conversation cleaned of personal data, for acme's reviewers.
    status, ticket = call(world, "GET", f"/v1/admin/escalations/{ticket_id}", "acme:operator")
    assert status == 200, ticket
    assert ticket["tenant_id"] == "acme" and ticket["service"] == "support"
    assert ticket["conversation_id"] == conversation and ticket["pii_cleaned"] is True
    stored = json.dumps(ticket["conversation"])
    assert "<EMAIL_1>" in stored and "jane.doe@example.com" not in stored
    with world["engine"].connect() as connection:
        raw = connection.execute(text("SELECT conversation FROM escalations WHERE id = :i"),
                                 {"i": ticket_id}).scalar_one()
    assert "jane.doe" not in raw

    # The webhook: signed, retried after the first 503, cleaned too.
    receiver: Receiver = world["receiver"]
    opened = wait_for(lambda: receiver.of(ticket_id, "escalation.opened"))
    assert len(opened) == 1 and receiver.bad_signatures == 0
    assert "jane.doe" not in json.dumps(opened[0])

    # The queue: list (filters), claim, answer, resolve.
    status, queue = call(world, "GET", "/v1/admin/escalations?status=open&service=support",
                         "acme:operator")
    assert status == 200 and ticket_id in [t["id"] for t in queue["data"]]
    status, claimed = call(world, "POST", f"/v1/admin/escalations/{ticket_id}/claim",
                           "acme:operator")
    assert status == 200 and claimed["status"] == "claimed"
    assert claimed["claimed_by"].startswith("key:")
    status, answered = call(world, "POST", f"/v1/admin/escalations/{ticket_id}/answer",
                            "acme:operator", {"answer": "Your parcel left our warehouse today.",
                                              "label": "model_could_not_know"})
    assert status == 200 and answered["status"] == "answered"

    # The client sees its tickets with its own key...
    status, mine = call(world, "GET", "/v1/escalations", "acme:client")
    assert status == 200
    assert [t["status"] for t in mine["data"] if t["id"] == ticket_id] == ["answered"]
    # ...and the next request in the conversation gets the reviewer's answer, once.
    status, delivered = chat(world, "Any news?", conversation, "acme:client")
    assert status == 200
    assert delivered["choices"][0]["message"]["content"] == (
        "Your parcel left our warehouse today.")
    assert delivered["shipyard"]["escalation"]["delivered"] is True
    status, after = chat(world, "Thanks!", conversation, "acme:client")
    assert status == 200 and after["choices"][0]["message"]["content"] == "Answer to: Thanks!"
    status, polled = call(world, "GET", f"/v1/escalations/{ticket_id}", "acme:client")
    assert status == 200 and polled["answer"] == "Your parcel left our warehouse today."

    status, resolved = call(world, "POST", f"/v1/admin/escalations/{ticket_id}/resolve",
                            "acme:operator", {"resolution": "parcel tracked"})
    assert status == 200 and resolved["status"] == "resolved"

    # 409 names the status; 404 and 422 name the field.
    status, error = call(world, "POST", f"/v1/admin/escalations/{ticket_id}/claim",
                         "acme:operator")
    assert status == 409 and "status is 'resolved'" in error["error"]["message"]
    assert error["error"]["param"] == "status"
    status, error = call(world, "POST", "/v1/admin/escalations/esc_nope/claim",
                         "acme:operator")
    assert status == 404 and "esc_nope" in error["error"]["message"]
    status, error = call(world, "POST", f"/v1/admin/escalations/{ticket_id}/answer",
                         "acme:operator", {"answer": ""})
    assert status == 422 and error["error"]["param"] == "answer"
    assert "non-empty string" in error["error"]["message"]
    status, error = call(world, "GET", "/v1/admin/escalations?status=pending", "acme:operator")
    assert status == 400 and "'pending'" in error["error"]["message"]

    # The answer is labelled feedback, exported by the CLI.
    exported = cli(world, "export", "--format", "jsonl", "--tenant", "acme")
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    row = next(r for r in rows if r["escalation_id"] == ticket_id)
    assert row["label"] == "model_could_not_know" and row["trigger"] == "user_request"
    assert row["answer"] == "Your parcel left our warehouse today."
    assert "jane.doe" not in json.dumps(row["conversation"])


def test_streamed_request_gets_the_notice_as_a_stream(world: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=f"{world['gateway'].url}/v1", api_key=API_KEY)
    chunks = list(client.chat.completions.create(
        model="support", stream=True,
        messages=[{"role": "user", "content": "Can I speak to a human agent, please?"}]))
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "A person from our support team will follow up" in text_out
    first = chunks[0].model_extra or {}
    assert first["shipyard"]["escalation"]["trigger"] == "user_request"


def test_look_alikes_do_not_escalate(world: dict[str, Any]) -> None:
    for content in ("The person I talked to said my refund was approved.",
                    "My agent told me to ask you about the warranty.",
                    'The bot kept replying "talk to a person" - what does that mean?'):
        status, answer = chat(world, content)
        assert status == 200 and "shipyard" not in answer, content


def test_low_confidence_from_the_body_and_from_the_header(world: dict[str, Any]) -> None:
    status, answer = chat(world, "I am unsure: can I return a used kettle?")
    assert status == 200
    escalation = answer["shipyard"]["escalation"]
    assert escalation["trigger"] == "low_confidence"
    status, ticket = call(world, "GET", f"/v1/admin/escalations/{escalation['id']}")
    assert ticket["score"] == pytest.approx(0.2)
    assert ticket["conversation"][-1] == {
        "role": "assistant", "content": "Answer to: I am unsure: can I return a used kettle?"}
    assert "below 0.5" in ticket["reason"]

    status, answer = chat(world, "unsure question", model="scored")
    assert status == 200 and answer["shipyard"]["escalation"]["trigger"] == "low_confidence"
    status, answer = chat(world, "sure question", model="scored")
    assert status == 200 and answer["choices"][0]["message"]["content"] == "From upstream"
    # A streamed answer with a low score in the header: the stream becomes the notice.
    client = openai.OpenAI(base_url=f"{world['gateway'].url}/v1", api_key=API_KEY)
    chunks = list(client.chat.completions.create(
        model="scored", stream=True, messages=[{"role": "user", "content": "unsure stream"}]))
    assert "From upstream" not in "".join(c.choices[0].delta.content or "" for c in chunks
                                          if c.choices)
    assert (chunks[0].model_extra or {})["shipyard"]["escalation"]["trigger"] == "low_confidence"
    chunks = list(client.chat.completions.create(
        model="scored", stream=True, messages=[{"role": "user", "content": "sure stream"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "From upstream")
    # An alias without escalation passes low scores through.
    status, answer = chat(world, "unsure question", model="plain")
    assert status == 200 and "shipyard" not in answer


def test_repeated_failures_in_a_conversation(world: dict[str, Any]) -> None:
    conversation = "conv-" + uuid.uuid4().hex[:8]
    status, first = chat(world, "crash please", conversation)
    assert status >= 500, first
    status, _ = chat(world, "crash please", "conv-other-" + uuid.uuid4().hex[:6])
    assert status >= 500  # another conversation counts separately
    status, second = chat(world, "crash again", conversation)
    assert status == 200, second
    assert second["shipyard"]["escalation"]["trigger"] == "repeated_failures"

    # The same for a service, whose graceful answer is a service.result.
    service_conversation = "conv-svc-" + uuid.uuid4().hex[:8]
    status, _ = call(world, "POST", "/v1/services/assist/invoke", None, {"text": "crash"},
                     service_conversation)
    assert status == 500
    status, result = call(world, "POST", "/v1/services/assist/invoke", None,
                          {"text": "crash"}, service_conversation)
    assert status == 200 and result["object"] == "service.result"
    assert result["shipyard"]["escalation"]["trigger"] == "repeated_failures"
    assert "member of our team" in result["output"]["message"]

    # A client that polls the answer does not get it again in the conversation.
    chat_ticket = second["shipyard"]["escalation"]["id"]
    status, _ = call(world, "POST", f"/v1/admin/escalations/{chat_ticket}/answer", None,
                     {"answer": "We fixed the knowledge base."})
    assert status == 200
    status, polled = call(world, "GET", f"/v1/escalations/{chat_ticket}")
    assert status == 200 and polled["answer"] == "We fixed the knowledge base."
    status, after = chat(world, "hello again", conversation)
    assert after["choices"][0]["message"]["content"] == "Answer to: hello again"


def test_service_triggers(world: dict[str, Any]) -> None:
    invoke = "/v1/services/assist/invoke"
    status, result = call(world, "POST", invoke, None, {"text": "where is my parcel"})
    assert status == 200 and result["output"]["confidence"] == 0.9 and "shipyard" not in result
    status, result = call(world, "POST", invoke, None, {"text": "I am unsure what to do"})
    assert status == 200 and result["shipyard"]["escalation"]["trigger"] == "low_confidence"
    status, result = call(world, "POST", invoke, None,
                          {"text": "Transfer me to an agent. My phone is +1 415 555 0134"})
    assert status == 200 and result["shipyard"]["escalation"]["trigger"] == "user_request"
    ticket_id = result["shipyard"]["escalation"]["id"]
    status, ticket = call(world, "GET", f"/v1/admin/escalations/{ticket_id}")
    assert ticket["kind"] == "service" and "555 0134" not in json.dumps(ticket["conversation"])
    status, metrics = call(world, "GET", "/metrics")
    assert status == 200
    assert 'shipyard_escalations_total{service="assist",trigger="user_request"}' in metrics


def test_overdue_alert_is_sent_once(world: dict[str, Any]) -> None:
    status, answer = chat(world, "get me a real person now")
    ticket_id = answer["shipyard"]["escalation"]["id"]
    receiver: Receiver = world["receiver"]
    alert = wait_for(lambda: receiver.of(ticket_id, "escalation.overdue"), timeout=15)
    assert alert[0]["escalation"]["overdue"] is True
    assert alert[0]["escalation"]["due_in_s"] <= 0
    status, overdue = call(world, "GET", "/v1/admin/escalations?overdue=true")
    assert status == 200 and ticket_id in [t["id"] for t in overdue["data"]]
    time.sleep(1.5)  # several more checker rounds
    assert len(receiver.of(ticket_id, "escalation.overdue")) == 1
    listed = cli(world, "list", "--overdue", "--json")
    assert listed.returncode == 0, listed.stderr
    assert ticket_id in listed.stdout


def test_tenant_isolation(world: dict[str, Any]) -> None:
    status, answer = chat(world, "speak to a human agent", key="acme:client")
    ticket_id = answer["shipyard"]["escalation"]["id"]
    for key in ("globex:operator", "globex:client", "acme:client2"):
        path = (f"/v1/admin/escalations/{ticket_id}" if key.endswith("operator")
                else f"/v1/escalations/{ticket_id}")
        status, error = call(world, "GET", path, key)
        assert status == 404, (key, error)
    status, queue = call(world, "GET", "/v1/admin/escalations", "globex:operator")
    assert status == 200 and ticket_id not in [t["id"] for t in queue["data"]]
    status, error = call(world, "POST", f"/v1/admin/escalations/{ticket_id}/claim",
                         "globex:operator")
    assert status == 404
    status, error = call(world, "GET", "/v1/admin/escalations?tenant=acme", "globex:operator")
    assert status == 403 and error["error"]["param"] == "tenant"
    for key in ("acme:client", "acme:viewer"):
        status, error = call(world, "GET", "/v1/admin/escalations", key)
        assert status == 403 and "escalations:read" in error["error"]["message"]
    # The platform admin acts on acme with ?tenant=, and from the CLI.
    status, ticket = call(world, "GET", f"/v1/admin/escalations/{ticket_id}?tenant=acme")
    assert status == 200 and ticket["tenant_id"] == "acme"
    claimed = cli(world, "claim", ticket_id, "--reviewer", "cli:alice")
    assert claimed.returncode == 0, claimed.stderr
    status, error = call(world, "POST", f"/v1/admin/escalations/{ticket_id}/claim",
                         "acme:operator")
    assert status == 409 and "'cli:alice'" in error["error"]["message"]
    shown = cli(world, "show", ticket_id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["claimed_by"] == "cli:alice"
    answered = cli(world, "answer", ticket_id, "We have called you back.", "--reviewer",
                   "cli:alice")
    assert answered.returncode == 0, answered.stderr
    assert cli(world, "resolve", ticket_id).returncode == 0
    again = cli(world, "resolve", ticket_id)
    assert again.returncode == 1 and "status is 'resolved'" in again.stderr


def _sse(world: dict[str, Any], key: str, body: dict[str, Any],
         conversation: str) -> list[str]:
    """The raw `data:` payloads of a streamed answer, in order (`[DONE]` included)."""
    url = urllib.parse.urlsplit(world["gateway"].url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers={
            "authorization": f"Bearer {world['keys'][key]}", "content-type": "application/json",
            "x-shipyard-conversation": conversation})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/event-stream")
        raw = response.read().decode()
    finally:
        conn.close()
    events = [e for e in raw.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), raw
    return [e[len("data: "):] for e in events]


def test_input_guard_escalates_a_streamed_request(world: dict[str, Any]) -> None:
    conversation = "conv-" + uuid.uuid4().hex[:8]
    question = "How do I launder money with gift cards from your shop?"
    data = _sse(world, "acme:client", {"model": "guarded", "stream": True, "messages": [
        {"role": "user", "content": question}]}, conversation)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "content_filter"
    guard = last["shipyard"]["guard"]
    assert (guard["action"], guard["stage"], guard["guard"]) == ("escalate", "input", "topics")
    escalation = last["shipyard"]["escalation"]
    ticket_id = escalation["id"]
    assert escalation["trigger"] == "guard" and escalation["status"] == "open"
    text_out = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"])
    assert text_out == f"A colleague will look at this with you (ticket {ticket_id})."

    # The ticket: for acme's reviewers, with the conversation and the guard's reason...
    status, ticket = call(world, "GET", f"/v1/admin/escalations/{ticket_id}", "acme:operator")
    assert status == 200, ticket
    assert ticket["trigger"] == "guard" and ticket["service"] == "guarded"
    assert ticket["tenant_id"] == "acme" and "guard 'topics' (input)" in ticket["reason"]
    assert ticket["conversation"] == [{"role": "user", "content": question}]
    # ...and the caller can poll the address its answer gave.
    status, polled = call(world, "GET", escalation["poll_url"], "acme:client")
    assert status == 200, polled
    assert polled["id"] == ticket_id and polled["status"] == "open"
    assert ticket["conversation_id"] == conversation


def test_service_guard_escalation_belongs_to_the_caller(world: dict[str, Any]) -> None:
    conversation = "conv-svc-" + uuid.uuid4().hex[:8]
    status, result = call(world, "POST", "/v1/services/vetted/invoke", "acme:client",
                          {"text": "How do I launder money with gift cards from your shop?"},
                          conversation)
    assert status == 200 and result["object"] == "service.result" and result["blocked"]
    escalation = result["shipyard"]["escalation"]
    assert escalation["trigger"] == "guard"
    status, polled = call(world, "GET", escalation["poll_url"], "acme:client")
    assert status == 200 and polled["id"] == escalation["id"], polled
    status, ticket = call(world, "GET", f"/v1/admin/escalations/{escalation['id']}",
                          "acme:operator")
    assert status == 200 and ticket["kind"] == "service"
    assert ticket["conversation_id"] == conversation
