"""Escalation parts on their own: the user-request detector (with near-misses), confidence
reading, failure counting, webhook signatures, PII cleaning of tickets, config errors, and the
ticket store's state machine on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from shipyard.config import parse_config
from shipyard.config.trust import EscalationConfig, PIIConfig
from shipyard.errors import ConfigError, Conflict, NotFound
from shipyard.escalation import EscalationPolicy, asks_for_person, read_confidence, sign, verify
from shipyard.escalation import store as tickets
from shipyard.escalation.answers import chat_answer_stream
from shipyard.escalation.triggers import FailureCounter, UserRequestDetector, last_user_text
from shipyard.state.memory import MemoryKeyValue
from shipyard.state.redis import RedisKeyValue
from shipyard.store import create_store_engine, migrate

ASKS = [
    "talk to a person",
    "Can I speak to a human agent, please?",
    "I want a real person",
    "I want to talk to a person about my refund",
    "speak to a human agent",
    "This is useless. Can I talk to a manager?",
    "Transfer me to an agent.",
    "please connect me with a representative",
    "human agent please",
    "Agent!",
    "Is there a person I can talk to?",
    "get me a real person now",
    "Let me talk to someone",
    "I need a human",
    "Je voudrais parler à un conseiller",
    "Ich möchte mit einem Menschen sprechen",
    "Quiero hablar con una persona",
    "Vorrei parlare con un operatore",
    "Quero falar com um atendente",
    "Ik wil met een medewerker spreken",
    "Can I speak to a human\u2019s agent? I mean a human agent",
]
LOOK_ALIKES = [
    "The person I talked to said my refund was approved.",
    "I talked to a person yesterday and they were lovely.",
    "My agent told me to ask you about the warranty.",
    "human resources asked me to fill in this form",
    "Is this a person or a bot?",
    "A real person would understand this.",
    "I need a person to help me move house, do you offer that?",
    'The customer wrote "talk to a person" in the ticket; how do I tag it?',
    "How do I talk to my manager about a raise?",
    "Speaking to a human is overrated.",
    "I need a human touch in this logo design.",
    "Ich habe mit einem Mitarbeiter gesprochen.",
    "Hablé con una persona ayer.",
    "The agent who helped me was great.",
]


@pytest.mark.parametrize("text", ASKS)
def test_requests_for_a_person_are_recognised(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_not(text: str) -> None:
    assert not asks_for_person(text)


def test_extra_phrases_and_the_last_user_message() -> None:
    detect = UserRequestDetector([r"\bcall me back\b"])
    assert detect("Please call me back tomorrow") and not detect("I called back")
    messages = [{"role": "user", "content": "talk to a person"},
                {"role": "assistant", "content": "Sure"},
                {"role": "user", "content": [{"type": "text", "text": "thanks"},
                                             {"type": "image_url", "image_url": {"url": "x"}}]}]
    assert last_user_text(messages) == "thanks"
    assert last_user_text("not a list") == ""


@pytest.mark.parametrize(("data", "path", "expected"), [
    ({"confidence": 0.4}, "confidence", 0.4),
    ({"meta": {"score": "0.25"}}, "meta.score", 0.25),
    ({"confidence": True}, "confidence", None),
    ({"confidence": "high"}, "confidence", None),
    ({"confidence": float("nan")}, "confidence", None),
    ({}, "confidence", None),
    ("0.3", "", 0.3),
    (None, "", None),
])
def test_read_confidence(data: Any, path: str, expected: float | None) -> None:
    assert read_confidence(data, path) == expected


@pytest.fixture(params=["memory", "redis"])
def kv_factory(request: pytest.FixtureRequest) -> Any:
    """Both state backends: replicas sharing Redis count a conversation's failures together."""
    if request.param == "memory":
        return MemoryKeyValue
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisKeyValue("redis://127.0.0.1:6379/0", prefix=prefix)


def test_failures_are_counted_per_conversation_within_the_window(kv_factory: Any) -> None:
    async def run() -> None:
        kv = kv_factory()
        counter = FailureCounter(kv)
        replica = FailureCounter(kv_factory())
        assert await counter.add("acme", "c1", 60) == 1
        assert await counter.add("acme", "c1", 60) == 2
        assert await counter.add("acme", "c2", 60) == 1
        assert await counter.add("globex", "c1", 60) == 1
        await counter.reset("acme", "c1")
        assert await counter.add("acme", "c1", 60) == 1
        assert await counter.add("acme", "c3", 0.05) == 1
        await asyncio.sleep(0.1)
        assert await counter.add("acme", "c3", 0.05) == 1  # the first one left the window
        if not isinstance(kv, MemoryKeyValue):
            assert await replica.add("acme", "c1", 60) == 2  # another replica, same count
        await kv.close()
        await replica.kv.close()

    asyncio.run(run())


def test_webhook_signatures() -> None:
    body = b'{"event":"escalation.opened"}'
    now = int(time.time())
    signature = sign(b"secret", body, now)
    assert verify(b"secret", body, str(now), signature)
    assert not verify(b"other", body, str(now), signature)
    assert not verify(b"secret", body + b" ", str(now), signature)
    assert not verify(b"secret", body, str(now - 3600), sign(b"secret", body, now - 3600))
    assert not verify(b"secret", body, "yesterday", signature)


def test_tickets_are_cleaned_with_consistent_placeholders() -> None:
    policy = EscalationPolicy("model", "support", EscalationConfig(enabled=True),
                              PIIConfig(allow=["help@shop.example"]))
    cleaned = policy.clean([
        {"role": "user", "content": "I am jane@example.com, card 4111 1111 1111 1111"},
        {"role": "assistant", "content": "Write to help@shop.example"},
        {"role": "user", "content": "again: jane@example.com"}])
    assert cleaned[0]["content"] == "I am <EMAIL_1>, card <CREDIT_CARD_1>"
    assert cleaned[1]["content"] == "Write to help@shop.example"  # allowed by the pii policy
    assert cleaned[2]["content"] == "again: <EMAIL_1>"


@pytest.mark.parametrize(("block", "expected"), [
    ("{enabled: true, webhook_secret: x}", "'models.a.escalation': webhook_secret is set but "
                                           "webhook_url is not"),
    ("{phrases: ['(call']}", "'models.a.escalation.phrases': phrase '(call' is not a valid "
                             "regular expression"),
    ("{message: 'ticket {ticket}'}", "may only use the placeholder {id}"),
    ("{min_confidence: 2}", "'models.a.escalation.min_confidence' is 2"),
    ("{webhook_url: 'ftp://x'}", "webhook_url 'ftp://x' must start with https:// or http://"),
    ("{sla_s: 0}", "'models.a.escalation.sla_s' is 0"),
])
def test_config_errors_name_the_key_and_the_fix(block: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"providers: {{p: {{kind: sim}}}}\nmodels: {{a: {{provider: p, "
                     f"escalation: {block}}}}}")
    assert expected in str(caught.value)


def test_a_streamed_notice_is_a_valid_sse_answer() -> None:
    async def collect() -> list[bytes]:
        return [chunk async for chunk in chat_answer_stream(
            "A person will follow up.", model="support", escalation={"id": "esc_1"},
            include_usage=True)]

    chunks = asyncio.run(collect())
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert b'"shipyard":{"escalation":{"id":"esc_1"}}' in chunks[0]
    assert b"A person will follow up." in chunks[1] and b'"usage"' in chunks[-2]


def _open(engine: Any, tenant: str = "acme", **kw: Any) -> tickets.Ticket:
    values: dict[str, Any] = {
        "tenant_id": tenant, "key_id": "k1", "conversation_id": "c1", "request_id": "r1",
        "trace_id": "t1", "kind": "model", "service": "support", "trigger": "user_request",
        "reason": "asked", "score": None, "conversation": [{"role": "user", "content": "hi"}],
        "pii_cleaned": True, "sla_s": 3600.0, **kw}
    return tickets.create_ticket(engine, **values)


def test_the_ticket_state_machine(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    try:
        ticket = _open(engine)
        assert ticket.status == "open" and not ticket.overdue()
        with pytest.raises(NotFound):
            tickets.get_ticket(engine, ticket.id, tenant_id="globex")
        with pytest.raises(NotFound):
            tickets.get_ticket(engine, ticket.id, tenant_id="acme", key_id="k2")
        assert tickets.claim_ticket(engine, ticket.id, tenant_id="acme",
                                    reviewer="alice").claimed_by == "alice"
        assert tickets.claim_ticket(engine, ticket.id, tenant_id="acme",
                                    reviewer="alice").status == "claimed"  # idempotent
        with pytest.raises(Conflict, match="status is 'claimed' by 'alice'"):
            tickets.claim_ticket(engine, ticket.id, tenant_id="acme", reviewer="bob")
        with pytest.raises(Conflict, match="claimed"):
            tickets.answer_ticket(engine, ticket.id, tenant_id="acme", reviewer="bob",
                                  answer="x")
        tickets.claim_ticket(engine, ticket.id, tenant_id="acme", reviewer="bob", force=True)
        answered = tickets.answer_ticket(engine, ticket.id, tenant_id="acme", reviewer="bob",
                                         answer="Refunded.", label="good")
        assert answered.status == "answered" and answered.answered_by == "bob"
        with pytest.raises(Conflict, match="status is 'answered'; its answer is already"):
            tickets.claim_ticket(engine, ticket.id, tenant_id="acme", reviewer="carol")
        assert tickets.take_answer(engine, tenant_id="globex", conversation_id="c1") is None
        taken = tickets.take_answer(engine, tenant_id="acme", conversation_id="c1")
        assert taken is not None and taken.answer == "Refunded."
        assert tickets.take_answer(engine, tenant_id="acme", conversation_id="c1") is None
        resolved = tickets.resolve_ticket(engine, ticket.id, tenant_id="acme",
                                          reviewer="bob", resolution="done")
        assert resolved.status == "resolved"
        with pytest.raises(Conflict, match="status is 'resolved'; it is closed"):
            tickets.resolve_ticket(engine, ticket.id, tenant_id="acme", reviewer="bob")
        feedback = list(tickets.iter_feedback(engine, tenant_id="acme"))
        assert [(f["escalation_id"], f["label"], f["answer"]) for f in feedback] == [
            (ticket.id, "good", "Refunded.")]
        assert list(tickets.iter_feedback(engine, tenant_id="globex")) == []

        # An open ticket answered directly is claimed by its reviewer.
        other = _open(engine, conversation_id="c2")
        direct = tickets.answer_ticket(engine, other.id, tenant_id="acme", reviewer="dan",
                                       answer="Hi")
        assert direct.claimed_by == "dan" and direct.claimed_at is not None
        assert tickets.pending_answers(engine) == {("acme", "c2")}
        assert tickets.mark_delivered(engine, other.id) is True  # the client polled it
        assert tickets.mark_delivered(engine, other.id) is False
        assert tickets.pending_answers(engine) == set()
        assert tickets.take_answer(engine, tenant_id="acme", conversation_id="c2") is None
    finally:
        engine.dispose()


def test_overdue_tickets_are_alerted_once(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    try:
        late = _open(engine, sla_s=0.01)
        fresh = _open(engine, sla_s=3600.0)
        time.sleep(0.05)
        assert tickets.get_ticket(engine, late.id, tenant_id="acme").overdue()
        due = [t.id for t in tickets.overdue_unnotified(engine)]
        assert due == [late.id]
        assert [t.id for t in tickets.list_tickets(engine, tenant_id="acme", overdue=True)] == [
            late.id]
        assert fresh.id in [t.id for t in tickets.list_tickets(engine, tenant_id="acme",
                                                                overdue=False)]
        assert tickets.mark_overdue_notified(engine, late.id) is True
        assert tickets.mark_overdue_notified(engine, late.id) is False
        assert tickets.overdue_unnotified(engine) == []
    finally:
        engine.dispose()


def test_webhook_deliveries_retry_sign_and_never_wait_for_the_receiver(tmp_path: Any) -> None:
    """Escalation events go through the durable outbox: queued at once, retried after a 502,
    not retried after a 400, retried then dead-lettered when nobody listens; each signed per
    Standard Webhooks and with the deprecated timestamped header."""
    from aiohttp import web

    from shipyard.escalation.webhook import event_data
    from shipyard.webhooks import verify as verify_standard
    from shipyard.webhooks.delivery import Endpoint, WebhookOutbox
    from shipyard.work import Backoff, Worker, WorkQueue

    engine = create_store_engine(f"sqlite:///{tmp_path}/s.db")
    migrate(engine)

    async def run() -> None:
        seen: list[tuple[bytes, dict[str, str]]] = []
        calls = {"n": 0}

        async def hook(request: web.Request) -> web.Response:
            calls["n"] += 1
            if calls["n"] == 1:
                return web.Response(status=502)  # retried
            seen.append((await request.read(), dict(request.headers)))
            return web.Response(status=200)

        async def refuse(request: web.Request) -> web.Response:
            calls["n"] += 100
            return web.Response(status=400)  # a 4xx other than 408/429: not retried

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/refuse", refuse)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}/nothing"
        fast = Backoff(0.01, 0.02)
        results: list[tuple[str, str, str]] = []
        outbox = WebhookOutbox(WorkQueue(engine), [
            Endpoint("models.a.escalation", f"http://127.0.0.1:{port}/hook", secret="s3cret",
                     max_attempts=3, backoff=fast, legacy="timestamp"),
            Endpoint("models.b.escalation", f"http://127.0.0.1:{port}/refuse",
                     max_attempts=4, backoff=fast, legacy="timestamp"),
            Endpoint("models.c.escalation", closed, max_attempts=2, backoff=fast,
                     timeout_s=1)], on_result=lambda *r: results.append(r))
        worker = Worker(outbox.queue, lease_s=5, poll_interval_s=0.05)
        outbox.attach(worker)
        try:
            started = time.perf_counter()
            first = await outbox.asend("models.a.escalation", "escalation.opened",
                                       event_data("escalation.opened", {"id": "esc_1"}),
                                       headers={"x-shipyard-event": "escalation.opened"})
            assert time.perf_counter() - started < 1.0  # queued, not delivered
            refused = await outbox.asend("models.b.escalation", "escalation.overdue",
                                         event_data("escalation.overdue", {"id": "esc_2"}))
            dead = await outbox.asend("models.c.escalation", "escalation.opened",
                                      event_data("escalation.opened", {"id": "esc_3"}))
            assert await worker.run_until_idle(timeout_s=30) == 2 + 1 + 2
            body, headers = seen[0]
            assert verify(b"s3cret", body, headers["x-shipyard-timestamp"],
                          headers["x-shipyard-signature"])
            assert verify_standard("s3cret", body, headers)["escalation"] == {"id": "esc_1"}
            assert headers["webhook-id"] == first.id
            assert headers["x-shipyard-event"] == "escalation.opened"
            assert calls["n"] == 102  # one attempt only at /refuse
            queue = outbox.queue
            assert queue.get(first.id, tenant_id=None).status == "succeeded"
            assert queue.get(refused.id, tenant_id=None).status == "dead"
            lost = queue.get(dead.id, tenant_id=None)
            assert lost.status == "dead" and lost.attempts == 2
            assert "Could not reach 127.0.0.1" in (lost.last_error or "")
            assert sorted(results) == sorted([
                ("models.a.escalation", "escalation.opened", "retry"),
                ("models.a.escalation", "escalation.opened", "delivered"),
                ("models.b.escalation", "escalation.overdue", "dead"),
                ("models.c.escalation", "escalation.opened", "retry"),
                ("models.c.escalation", "escalation.opened", "dead")])
        finally:
            await outbox.close()
            await runner.cleanup()

    try:
        asyncio.run(run())
    finally:
        engine.dispose()


def test_the_python_api_a_guard_calls(tmp_path: Any) -> None:
    from dataclasses import dataclass

    from shipyard.escalation import Escalations

    @dataclass
    class Ctx:
        tenant_id: str = "acme"
        key_id: str | None = "k1"
        request_id: str = "req_1"
        trace_id: str = "t" * 32
        service: str | None = "support"
        model_alias: str | None = "support"

    config = parse_config("""
providers: {p: {kind: sim}}
models:
  support: {provider: p, escalation: {enabled: true, message: "Ticket {id}: a person will reply."}}
""")
    engine = create_store_engine(f"sqlite:///{tmp_path}/s.db")
    migrate(engine)

    async def run() -> None:
        escalations = Escalations.from_config(config, engine, MemoryKeyValue())
        ticket = await escalations.open(
            Ctx(), reason="refund above the limit", trigger="guard", score=0.3,
            conversation=[{"role": "user", "content": "refund 900 EUR to bob@example.com"}],
            conversation_id="c9")
        assert ticket.trigger == "guard" and ticket.status == "open" and ticket.score == 0.3
        assert ticket.conversation[0]["content"] == "refund 900 EUR to <EMAIL_1>"
        answer = escalations.chat_response(ticket, model="support")
        assert answer["choices"][0]["message"]["content"] == (
            f"Ticket {ticket.id}: a person will reply.")
        assert answer["shipyard"]["escalation"]["id"] == ticket.id
        again = await escalations.open(Ctx(), reason="again", trigger="user_request",
                                       conversation=[], conversation_id="c9")
        assert again.id == ticket.id  # the conversation keeps its waiting ticket
        result = escalations.service_response(ticket, service="support", result_id="r")
        assert result["output"]["message"].startswith("Ticket ")
        assert escalations.notify(ticket, "escalation.opened") is None  # no webhook set
        await escalations.close()

    try:
        asyncio.run(run())
    finally:
        engine.dispose()


def test_a_ticket_belongs_to_the_key_or_the_oidc_subject() -> None:
    from shipyard.escalation import caller_of
    from shipyard.security.principal import Principal

    assert caller_of(Principal(tenant_id="acme", key_id="k1", role="client")) == "k1"
    alice = caller_of(Principal(tenant_id="acme", key_id=None, role="client", subject="alice"))
    bob = caller_of(Principal(tenant_id="acme", key_id=None, role="client", subject="bob"))
    assert alice is not None and alice.startswith("sub:") and alice != bob
    assert len(alice) <= 64  # fits the key_id column
    assert caller_of(Principal(tenant_id="default", key_id=None)) is None  # auth disabled
