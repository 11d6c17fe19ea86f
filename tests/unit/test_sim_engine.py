"""`shipyard.sim.engine`: deterministic answers, streams, embeddings and fault knobs."""

from __future__ import annotations

import base64
import math
import struct
from collections import Counter
from typing import Any

import pytest

from shipyard.observe.tokens import estimate_text
from shipyard.sim.engine import Faults, SimModel, parse_latency


def chat_body(prompt: str = "Tell me about ships.", **extra: Any) -> dict[str, Any]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": prompt}], **extra}


def test_same_prompt_same_answer_across_instances() -> None:
    one = SimModel(seed=1).chat(chat_body())
    two = SimModel(seed=2).chat(chat_body())
    assert one["choices"][0]["message"]["content"] == two["choices"][0]["message"]["content"]
    assert one["usage"] == two["usage"]
    assert one["id"] != two["id"]


def test_different_prompts_differ() -> None:
    model = SimModel()
    answers = {model.chat(chat_body(f"question {i}"))["choices"][0]["message"]["content"]
               for i in range(10)}
    assert len(answers) == 10


def test_chat_answer_shape_and_usage() -> None:
    answer = SimModel().chat(chat_body())
    choice = answer["choices"][0]
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "sim-chat"
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["completion_tokens"] == estimate_text(choice["message"]["content"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_omit_usage() -> None:
    assert "usage" not in SimModel().chat(chat_body(), omit_usage=True)


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_is_respected(max_tokens: int, param: str) -> None:
    model = SimModel()
    for prompt in ("a", "Tell me about ships.", "Why is the sky blue?", "xyz 123"):
        answer = model.chat(chat_body(prompt, **{param: max_tokens}))
        text = answer["choices"][0]["message"]["content"]
        assert answer["usage"]["completion_tokens"] <= max_tokens, text
        assert answer["usage"]["completion_tokens"] == estimate_text(text)
        assert answer["choices"][0]["finish_reason"] == "length"
        assert text


def test_generous_max_tokens_finishes_with_stop() -> None:
    free = SimModel().chat(chat_body())
    limited = SimModel().chat(chat_body(max_tokens=1000))
    assert limited["choices"][0] == free["choices"][0]
    assert limited["choices"][0]["finish_reason"] == "stop"


def test_legacy_completion_defaults_to_16_tokens() -> None:
    answer = SimModel().completion({"model": "sim-chat", "prompt": "Once upon a time"})
    assert answer["object"] == "text_completion"
    assert answer["usage"]["completion_tokens"] <= 16
    assert answer["choices"][0]["finish_reason"] in {"stop", "length"}


def _stream_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.mark.parametrize("extra", [{}, {"max_tokens": 4}])
def test_chunks_reassemble_to_the_non_stream_answer(extra: dict[str, Any]) -> None:
    model = SimModel()
    full = model.chat(chat_body(**extra))
    chunks = list(model.chat_chunks(chat_body(stream=True, **extra)))

    assert _stream_text(chunks) == full["choices"][0]["message"]["content"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == full["choices"][0]["finish_reason"]
    assert all(f is None for f in finishes[:-1])


def test_no_usage_chunk_unless_asked() -> None:
    chunks = list(SimModel().chat_chunks(chat_body(stream=True)))
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


def test_usage_chunk_when_include_usage() -> None:
    model = SimModel()
    body = chat_body(stream=True, stream_options={"include_usage": True})
    chunks = list(model.chat_chunks(body))

    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == model.chat(chat_body())["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])  # as OpenAI sends it

    omitted = list(model.chat_chunks(body, omit_usage=True))
    assert all(c["choices"] for c in omitted)


def test_completion_chunks_reassemble() -> None:
    model = SimModel()
    body = {"model": "sim-chat", "prompt": "Once upon a time", "max_tokens": 5}
    text = model.completion(body)["choices"][0]["text"]
    chunks = list(model.completion_chunks({**body, "stream": True,
                                           "stream_options": {"include_usage": True}}))
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == text
    assert chunks[-1]["usage"]["completion_tokens"] <= 5


@pytest.mark.parametrize("dims", [None, 8, 64, 100, 1536])
def test_embeddings_are_normalised_with_requested_dimensions(dims: int | None) -> None:
    model = SimModel(embedding_dims=64)
    body: dict[str, Any] = {"model": "sim-embed", "input": ["first text", "second text"]}
    if dims is not None:
        body["dimensions"] = dims
    result = model.embeddings(body)

    assert result["object"] == "list"
    assert [d["index"] for d in result["data"]] == [0, 1]
    for item in result["data"]:
        vector = item["embedding"]
        assert len(vector) == (dims or 64)
        assert math.sqrt(sum(v * v for v in vector)) == pytest.approx(1.0, abs=1e-9)
    assert result["data"][0]["embedding"] != result["data"][1]["embedding"]
    assert result["usage"]["prompt_tokens"] == result["usage"]["total_tokens"] > 0


def test_embeddings_are_deterministic() -> None:
    body = {"model": "sim-embed", "input": "same text"}
    assert SimModel().embeddings(body)["data"] == SimModel().embeddings(body)["data"]


def test_base64_embeddings_decode_to_the_same_floats() -> None:
    model = SimModel()
    body = {"model": "sim-embed", "input": "some text", "dimensions": 32}
    floats = model.embeddings(body)["data"][0]["embedding"]
    encoded = model.embeddings({**body, "encoding_format": "base64"})["data"][0]["embedding"]

    raw = base64.b64decode(encoded)
    assert len(raw) == 4 * 32
    decoded = struct.unpack("<32f", raw)
    assert decoded == pytest.approx(floats, abs=1e-6)  # float32 precision


# -- faults --------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"hang_rate": 1.5}, "'hang_rate' is 1.5"),
    ({"cut_rate": -0.1}, "'cut_rate' is -0.1"),
    ({"error_rates": {"500": 1.2}}, "error_rates[500] is 1.2"),
    ({"error_rates": {"500": 0.6, "503": 0.5}}, "add up to 1.1"),
    ({"error_rates": {"418": 0.1}}, "status 418"),
    ({"latency": "fast"}, "latency 'fast' is not understood"),
    ({"latency": "uniform:20"}, "latency 'uniform:20' is not understood"),
    ({"latency": "normal:-5,1"}, "not understood"),
    ({"token_delay_ms": -1}, "must not be negative"),
])
def test_invalid_faults_are_rejected(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError) as info:
        Faults(**kwargs)
    assert expected in str(info.value)


@pytest.mark.parametrize(("spec", "parsed"), [
    ("50", ("fixed", (50.0,))),
    (50, ("fixed", (50.0,))),
    ("uniform:20,80", ("uniform", (20.0, 80.0))),
    ("normal:50,10", ("normal", (50.0, 10.0))),
    ("lognormal:50,0.5", ("lognormal", (50.0, 0.5))),
    ("exp:50", ("exp", (50.0,))),
])
def test_latency_specs(spec: str | int, parsed: tuple[str, tuple[float, ...]]) -> None:
    assert parse_latency(spec) == parsed
    faults = Faults(latency=str(spec))
    model = SimModel(seed=3)
    draws = [model.latency_s(faults) for _ in range(200)]
    assert all(d >= 0 for d in draws)
    assert 0.01 < sum(draws) / len(draws) < 0.2  # all specs above are around 50 ms


def test_update_applies_valid_changes() -> None:
    faults = Faults()
    faults.update({"error_rates": {500: 0.25}, "hang_rate": 0.1, "latency": "uniform:1,2"})
    assert faults.error_rates == {"500": 0.25}
    assert faults.hang_rate == 0.1
    assert faults.latency == "uniform:1,2"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"hang_rate": 0.2, "reset_rate": 2.0}, "'reset_rate' is 2.0"),
    ({"error_rates": {"500": 0.9, "502": 0.9}}, "add up to"),
    ({"latency": "soon"}, "latency 'soon'"),
    ({"hang_rate": 0.2, "bogus_knob": 1}, "unknown fault knob(s) ['bogus_knob']"),
])
def test_failed_update_leaves_faults_unchanged(changes: dict[str, Any], expected: str) -> None:
    faults = Faults(error_rates={"503": 0.1}, cut_rate=0.05, latency="10")
    before = faults.to_dict()
    with pytest.raises(ValueError) as info:
        faults.update(changes)
    assert expected in str(info.value)
    assert faults.to_dict() == before


def test_draw_fault_frequencies_match_rates() -> None:
    faults = Faults(error_rates={"500": 0.2, "429": 0.05}, hang_rate=0.1, reset_rate=0.05,
                    malformed_rate=0.05, cut_rate=0.1)
    expected = {"500": 0.2, "429": 0.05, "hang": 0.1, "reset": 0.05, "malformed": 0.05,
                "cut": 0.1, None: 0.45}
    model = SimModel(seed=1234)
    draws = 20_000
    counts = Counter(model.draw_fault(faults) for _ in range(draws))

    assert set(counts) == set(expected)
    for outcome, rate in expected.items():
        # 5 standard deviations of a binomial proportion: deterministic with the seed anyway.
        tolerance = 5 * math.sqrt(rate * (1 - rate) / draws)
        assert abs(counts[outcome] / draws - rate) < tolerance, (outcome, counts[outcome])


def test_no_faults_means_no_draws() -> None:
    model = SimModel(seed=1)
    assert {model.draw_fault(Faults()) for _ in range(1000)} == {None}


def test_seeded_draws_are_reproducible() -> None:
    faults = Faults(error_rates={"500": 0.5})
    one, two = SimModel(seed=7), SimModel(seed=7)
    draws = [one.draw_fault(faults) for _ in range(100)]
    assert draws == [two.draw_fault(faults) for _ in range(100)]
    assert set(draws) == {"500", None}
