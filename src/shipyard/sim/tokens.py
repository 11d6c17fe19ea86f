"""The sim's tokens and their log probabilities, consistent with the usage it reports.

`split_tokens` cuts a text into the pieces `shipyard.observe.tokens.estimate_text` counts (so
`len(split_tokens(t)) == estimate_text(t)` and `"".join(split_tokens(t)) == t`); whitespace
rides on the token after it, as in GPT-style tokenizers. Log probabilities are a hash of the
token, its position and the request's salt: deterministic, and the alternatives of each token
are less likely than the token itself and sum with it to at most 1.

>>> split_tokens("Hello, world!")
['Hello', ',', ' world', '!']
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

__all__ = ["chat_logprobs", "completion_logprobs", "split_tokens"]

_PIECES = re.compile(r"[^\W\d_]+|\d{1,3}|[^\w\s]+|_+", re.UNICODE)
_ALTERNATIVES = ("the", " a", " and", ",", ".", " of", " to", " in", " is", " it", " for",
                 " on", " with", " as", " at", " by", " this", " that", " or", " be", " from")


def _cuts(piece: str) -> list[str]:
    """The tokens of one regex piece, mirroring estimate_text's count."""
    n = len(piece)
    if piece.isascii():
        size = n if n <= 10 else 5
    elif not piece.isalpha() or ord(piece[0]) > 0x2E7F:
        size = 2
    else:
        size = n if n <= 4 else 3
    return [piece[i:i + size] for i in range(0, n, size)]


def split_tokens(text: str) -> list[str]:
    """Cut `text` into tokens; their number is what the sim reports as usage."""
    tokens: list[str] = []
    pending = ""  # whitespace waiting for the next token
    position = 0
    for match in _PIECES.finditer(text):
        pending += text[position:match.start()]
        position = match.end()
        for i, cut in enumerate(_cuts(match.group())):
            tokens.append(pending + cut if i == 0 else cut)
        pending = ""
    tail = pending + text[position:]
    if tail and tokens:
        tokens[-1] += tail
    return tokens


def _logprob(token: str, position: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}\x00{position}\x00{token}".encode(), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2**64
    # Mostly confident tokens, a long tail of unsure ones (like a real model's).
    return round(-(unit**3) * 4.0 - 1e-4, 6)


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _alternatives(token: str, logprob: float, count: int, position: int) -> list[tuple[str, float]]:
    rest = 1.0 - math.exp(logprob)
    out: list[tuple[str, float]] = []
    start = position % len(_ALTERNATIVES)
    j = 0
    while len(out) < count and j < len(_ALTERNATIVES) + count:
        candidate = _ALTERNATIVES[(start + j) % len(_ALTERNATIVES)]
        if j >= len(_ALTERNATIVES):
            candidate = f"{candidate}{j}"
        j += 1
        if candidate == token or any(candidate == c for c, _ in out):
            continue
        # Halving shares of what the chosen token left: the whole list sums to at most 1.
        out.append((candidate, round(math.log(rest / 2 ** (len(out) + 1)), 6)))
    return out


def chat_logprobs(tokens: list[str], top: int, salt: str,
                  offset: int = 0) -> list[dict[str, Any]]:
    """`choices[].logprobs.content` of a chat answer (or of one streamed chunk)."""
    content = []
    for i, token in enumerate(tokens):
        logprob = _logprob(token, offset + i, salt)
        entry = _entry(token, logprob)
        entry["top_logprobs"] = [_entry(token, logprob)] + [
            _entry(alt, lp) for alt, lp in _alternatives(token, logprob, top - 1, offset + i)
        ] if top > 0 else []
        content.append(entry)
    return content


def completion_logprobs(tokens: list[str], top: int, salt: str, *, text_offset: int = 0,
                        offset: int = 0, first_is_prompt: bool = False) -> dict[str, Any]:
    """`choices[].logprobs` of a legacy completion: tokens, token_logprobs, top_logprobs,
    text_offset. With `first_is_prompt` (echo), the first token has no log probability."""
    logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    at = text_offset
    for i, token in enumerate(tokens):
        offsets.append(at)
        at += len(token)
        if first_is_prompt and offset + i == 0:
            logprobs.append(None)
            tops.append(None)
            continue
        logprob = _logprob(token, offset + i, salt)
        logprobs.append(logprob)
        tops.append({token: logprob, **dict(_alternatives(token, logprob, top - 1, offset + i))}
                    if top > 0 else None)
    return {"tokens": list(tokens), "token_logprobs": logprobs, "top_logprobs": tops,
            "text_offset": offsets}
