"""`shipyard.observe.tokens`: offline estimates close to the real GPT-4 (cl100k_base) counts."""

from __future__ import annotations

import pytest

from shipyard.observe.tokens import estimate_chat_prompt, estimate_text

# Token counts under tiktoken's cl100k_base (GPT-4 / GPT-3.5-turbo).
KNOWN = [
    ("Hello, world!", 4),
    ("Hello!", 2),
    ("This is a test.", 5),
    ("You are a helpful assistant.", 6),
    ("What is the capital of France?", 7),
    ("The quick brown fox jumps over the lazy dog.", 10),
    ("tiktoken is great!", 6),  # the example in OpenAI's cookbook
]


@pytest.mark.parametrize(("text", "real"), KNOWN)
def test_estimate_is_within_35_percent_of_cl100k(text: str, real: int) -> None:
    estimate = estimate_text(text)
    assert abs(estimate - real) <= 0.35 * real, f"{text!r}: estimated {estimate}, real {real}"


def test_empty_text_is_zero_tokens() -> None:
    assert estimate_text("") == 0


def test_estimate_grows_with_length() -> None:
    sentence = "The quick brown fox jumps over the lazy dog. "
    counts = [estimate_text(sentence * n) for n in range(1, 8)]
    assert counts == sorted(counts)
    assert len(set(counts)) == len(counts)  # strictly increasing
    assert counts[-1] == 7 * counts[0]


def test_estimate_never_shrinks_as_text_is_typed() -> None:
    text = ("Shipyard relays streaming answers, records 12345 traces on 2024-11-27 and "
            "internationalization budgets; naïve café résumé — 東京 and Москва.")
    counts = [estimate_text(text[:i]) for i in range(len(text) + 1)]
    drops = [(i, text[:i]) for i in range(1, len(counts)) if counts[i] < counts[i - 1]]
    assert drops == []


def test_long_words_and_numbers_cost_more_than_one_token() -> None:
    assert estimate_text("internationalization") > estimate_text("nation")
    assert estimate_text("1234567890") > estimate_text("123")


@pytest.mark.parametrize("text", ["こんにちは世界", "Привет, мир!", "你好\uff0c世界",
                                  "مرحبا بالعالم", "नमस्ते दुनिया"])
def test_non_latin_text_counts_tokens(text: str) -> None:
    assert estimate_text(text) > 0


def test_cjk_is_denser_than_its_word_count() -> None:
    # CJK has no spaces; a BPE tokenizer still needs several tokens per sentence.
    assert estimate_text("今日はとても良い天気ですね") >= 5


def test_chat_prompt_matches_openai_framing() -> None:
    # OpenAI's cookbook formula for gpt-4: 3 tokens per message + role + content, plus 3 to
    # prime the reply: 3 + (3 + 1 + 6) + (3 + 1 + 2) = 19.
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello!"}]
    estimate = estimate_chat_prompt(messages)
    assert abs(estimate - 19) <= 0.35 * 19


def test_chat_framing_adds_tokens_per_message() -> None:
    one = [{"role": "user", "content": "Hello!"}]
    two = [*one, {"role": "assistant", "content": "Hello!"}]
    text_only = estimate_text("Hello!")

    assert estimate_chat_prompt([]) > 0  # reply priming
    assert estimate_chat_prompt(one) > text_only
    assert estimate_chat_prompt(two) - estimate_chat_prompt(one) > text_only


def test_chat_counts_content_parts_and_names() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello, world!"},
                                          {"type": "image_url", "image_url": {"url": "x"}}]}]
    plain = [{"role": "user", "content": "Hello, world!"}]
    assert estimate_chat_prompt(parts) == estimate_chat_prompt(plain)

    named = [{"role": "user", "name": "example_user", "content": "Hello, world!"}]
    assert estimate_chat_prompt(named) > estimate_chat_prompt(plain)


def test_chat_ignores_malformed_messages() -> None:
    base = [{"role": "user", "content": "Hello!"}]
    assert estimate_chat_prompt([*base, "not a message", None]) == estimate_chat_prompt(base)
