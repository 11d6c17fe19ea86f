"""Reversible pseudonymization: tables, restoring split streams, leak windows, and the
gateway policy's config checks."""

from __future__ import annotations

import asyncio
import random

import pytest

from shipyard.config.trust import PIIConfig
from shipyard.errors import ConfigError
from shipyard.pipeline import RequestContext
from shipyard.privacy import PIIEngine
from shipyard.privacy.policy import PIIPolicy
from shipyard.privacy.pseudonymize import (
    LeakWindow,
    Pseudonymize,
    Pseudonyms,
    StreamRestorer,
    TypeMarker,
)
from shipyard.state.memory import MemoryKeyValue


def test_table_numbers_per_entity_and_round_trips() -> None:
    table = Pseudonyms()
    assert table.placeholder("EMAIL", "a@x.io") == "<EMAIL_1>"
    assert table.placeholder("PHONE", "+1 202 555 0100") == "<PHONE_1>"
    assert table.placeholder("EMAIL", "b@x.io") == "<EMAIL_2>"
    assert table.placeholder("EMAIL", "a@x.io") == "<EMAIL_1>"
    loaded = Pseudonyms.from_bytes(table.to_bytes())
    assert loaded.placeholder("EMAIL", "c@x.io") == "<EMAIL_3>"  # numbering continues
    assert loaded.restore("<EMAIL_2> <PHONE_1> <EMAIL_9> <email_1>") == (
        "b@x.io +1 202 555 0100 <EMAIL_9> <email_1>")
    assert loaded.hide("mail a@x.io or b@x.io") == "mail <EMAIL_1> or <EMAIL_2>"


def test_pseudonymize_operator_is_consistent_across_calls() -> None:
    engine, table = PIIEngine(), Pseudonyms()
    first = engine.anonymize("a@x.io", engine.analyze("a@x.io"), Pseudonymize(table))
    text = "b@x.io and a@x.io"
    second = engine.anonymize(text, engine.analyze(text), Pseudonymize(table))
    assert (first, second) == ("<EMAIL_1>", "<EMAIL_2> and <EMAIL_1>")


@pytest.mark.parametrize("seed", range(30))
def test_stream_restorer_handles_any_split(seed: int) -> None:
    table = Pseudonyms({"Ada Lovelace": "<PERSON_1>", "ada@x.io": "<EMAIL_12>"})
    text = "Dear <PERSON_1>, we wrote to <EMAIL_12> (not <EMAIL_3>) < 5 <x> <PERSON_1>"
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), 12))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    restorer = StreamRestorer(table)
    out = "".join(restorer.feed(p) for p in pieces) + restorer.flush()
    assert out == table.restore(text)
    assert "Ada Lovelace" in out and "<EMAIL_3>" in out


def test_stream_restorer_does_not_hold_plain_text() -> None:
    restorer = StreamRestorer(Pseudonyms())
    assert restorer.feed("a < b and c") == "a < b and c"
    assert restorer.feed(" then <") == " then "
    assert restorer.feed("br> done") == "<br> done"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_leak_window_finds_entities_split_across_chunks(size: int) -> None:
    text = ("Reach me at leak.desk@corp-mail.example or card 4111-1111-1111-1111 soon; "
            "otherwise nothing else here is personal at all, see you")
    found: list[str] = []
    window = LeakWindow(PIIEngine(), TypeMarker(), window=32,
                        on_findings=lambda fs: found.extend(f.entity for f in fs))
    out = "".join(window.feed(text[i:i + size]) for i in range(0, len(text), size))
    out += window.flush()
    assert out == ("Reach me at <EMAIL> or card <CREDIT_CARD> soon; otherwise nothing else "
                   "here is personal at all, see you")
    assert sorted(found) == ["CREDIT_CARD", "EMAIL"]


def test_leak_window_releases_a_long_word_eventually() -> None:
    window = LeakWindow(PIIEngine(), TypeMarker(), window=16)
    released = window.feed("x" * 200)
    assert released and len(released) + len(window.flush()) == 200


def _policy(config: PIIConfig, *, persistent: bool = False) -> PIIPolicy:
    return PIIPolicy(config, "models.chat", kv=MemoryKeyValue(), cipher=None,
                     persistent_kv=persistent, count=lambda *a: None)


def test_policy_rejects_unknown_entities_with_the_known_list() -> None:
    with pytest.raises(ConfigError) as err:
        _policy(PIIConfig(mode="redact", entities=["EMAIL", "EMIAL"]))
    assert "'models.chat.pii.entities' names 'EMIAL'" in str(err.value)
    assert "CREDIT_CARD" in str(err.value)


def test_conversation_tables_leaving_the_process_need_a_key() -> None:
    with pytest.raises(ConfigError, match=r"traces\.encryption_keys"):
        _policy(PIIConfig(mode="pseudonymize", scope="conversation"), persistent=True)
    assert _policy(PIIConfig(mode="pseudonymize", scope="conversation")).cipher is not None


def test_conversation_table_is_stored_encrypted() -> None:
    asyncio.run(_conversation_table_is_stored_encrypted())


async def _conversation_table_is_stored_encrypted() -> None:
    kv = MemoryKeyValue()
    policy = PIIPolicy(PIIConfig(mode="pseudonymize", scope="conversation"), "models.chat",
                       kv=kv, cipher=None, persistent_kv=False, count=lambda *a: None)
    ctx = RequestContext("r1", "chat", "t1")
    session = await policy.open(ctx, "conv-1")
    assert session.clean_text("mail a@x.io", "messages[0].content") == "mail <EMAIL_1>"
    await session.close()
    (key,) = [k for k in kv._items if k.startswith("pii:default:models.chat:")]
    sealed = (await kv.get(key)) or b""
    assert b"a@x.io" not in sealed and sealed.startswith(b"enc:v1:")
    again = await policy.open(RequestContext("r2", "chat", "t2"), "conv-1")
    assert again.table.restore("<EMAIL_1>") == "a@x.io"
    other_tenant = RequestContext("r3", "chat", "t3")
    other_tenant.tenant_id = "acme"
    assert (await policy.open(other_tenant, "conv-1")).table.restore("<EMAIL_1>") == (
        "<EMAIL_1>")
