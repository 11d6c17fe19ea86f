"""Grounding: is each sentence of a retrieval-augmented answer supported by the context?

A sentence is supported when enough of its content words (stop words dropped, crude
stemming) and of its word pairs appear in one passage of the context, and every number it
states appears in the context too (planted claims very often change a number). Sentences that
are not claims (too short, questions, greetings) are not judged. With `require_citations`, a
claim must also carry a citation marker such as `[1]` or `[doc-2]`.

>>> g = GroundingGuard(action="block")
>>> ctx = ["Refunds are issued within 14 days of receiving the returned item."]
>>> g.check(Subject("Refunds are issued within 14 days.", "output", context=ctx)).action
'allow'
>>> g.check(Subject("Refunds are issued within 30 days.", "output", context=ctx)).action
'block'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

from shipyard.guards.base import Guard, Subject, Verdict, text_of
from shipyard.guards.normalize import fold

__all__ = ["GroundingGuard", "grounding_score", "sentences", "support"]

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])|\n+")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CITATION = re.compile(r"\[[^\]\s]{1,20}\]|\(source:[^)]+\)|【[^】]+】")
_STOP = frozenset(str.split("""a an the and or but if then so of to in on at by for with from
as is are
was were be been being it its this that these those there here you your we our they their he
she his her i me my mine can could will would shall should may might must do does did have
has had not no yes also just than too very more most such any all each some into about over
after before under again further once only own same both few other what which who whom when
where why how up down out off per via"""))
_CHAT = re.compile(r"^(hi|hello|thanks|thank you|sure|of course|happy to help|glad to help|"
                   r"great question|let me know|i hope this helps|is there anything else)\b")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _content(text: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(fold(text)) if t not in _STOP]


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def support(sentence: str, passages: Sequence[str]) -> float:
    """How well the best passage supports `sentence` (0-1): the mean of content-word and
    word-pair coverage; 0 when the sentence states a number no passage has."""
    words = _content(_CITATION.sub("", sentence))
    if not words:
        return 1.0
    pairs = set(pairwise(words))
    numbers = _numbers(_CITATION.sub("", sentence))
    best = 0.0
    for passage in passages:
        got = _content(passage)
        vocabulary = set(got)
        unigram = sum(w in vocabulary for w in words) / len(words)
        if unigram <= best:
            continue
        have = set(pairwise(got))
        bigram = (sum(p in have for p in pairs) / len(pairs)) if pairs else unigram
        if numbers and not numbers <= _numbers(passage):
            continue
        best = max(best, (unigram + bigram) / 2)
    return best


def _passages(texts: Sequence[str], size: int = 3) -> list[str]:
    """Context split into overlapping runs of `size` sentences (a claim may join two)."""
    out: list[str] = []
    for text in texts:
        parts = sentences(text)
        if len(parts) <= size:
            out.append(text)
            continue
        out.extend(" ".join(parts[i:i + size]) for i in range(0, len(parts) - size + 1))
    return out


def _is_claim(sentence: str, min_words: int) -> bool:
    """Sentences that are not claims (too short, questions, greetings) are not judged."""
    return not (len(_content(sentence)) < min_words or sentence.endswith("?")
                or _CHAT.match(fold(sentence)))


def grounding_score(text: str, context: Sequence[str], *, threshold: float = 0.6,
                    min_words: int = 3) -> float | None:
    """The fraction of `text`'s claims that `context` supports, judged as the guard judges
    them (`shipyard eval --metric grounding`); None when there is no context or no claim.

    >>> grounding_score("Refunds are issued within 14 days. Shipping is free worldwide.",
    ...                 ["Refunds are issued within 14 days of receiving the item."])
    0.5
    """
    context = [c for c in context if c and c.strip()]
    if not context:
        return None
    claims = [s for s in sentences(text) if _is_claim(s, min_words)]
    if not claims:
        return None
    passages = _passages(context)
    return sum(support(s, passages) >= threshold for s in claims) / len(claims)


class GroundingGuard(Guard):
    """Check each sentence of an answer against the retrieved context.

    The context is the subject's `context` (what a service's function returned with
    `shipyard.Result`, or its `context`/`documents` input field) or, for chat, the content of
    messages whose role is in `roles` (default: `tool` and `system`). With no context at all
    the verdict is allow with the reason `skipped: no context`, visible on the trace.
    `threshold`: support a claim needs (0-1). `action`: `remove` unsupported sentences (a fix;
    blocks when nothing supported is left), `block`, `escalate`, or `flag` (record, allow).
    """

    name = "grounding"

    def __init__(self, *, threshold: float = 0.6, action: str = "remove",
                 require_citations: bool = False, min_words: int = 3,
                 roles: Sequence[str] = ("tool", "system")) -> None:
        if action not in ("remove", "block", "escalate", "flag"):
            raise ValueError(f"action is {action!r}; use remove, block, escalate or flag")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is {threshold}; it must be above 0 and at most 1")
        self.threshold = threshold
        self.action = action
        self.require_citations = require_citations
        self.min_words = min_words
        self.roles = tuple(roles)

    def _context(self, subject: Subject) -> list[str]:
        if subject.context:
            return list(subject.context)
        return [text_of(m.get("content")) for m in subject.messages
                if m.get("role") in self.roles and m.get("content")]

    def check(self, subject: Subject) -> Verdict:
        context = self._context(subject)
        if not context:  # nothing to ground in: say so on the trace rather than pass silently
            return Verdict("allow", 0.0, "skipped: no context", None, "skipped",
                           {"skipped": "no context"})
        passages = _passages(context)
        parts = sentences(subject.text)
        unsupported: list[int] = []
        uncited: list[int] = []
        judged = 0
        for i, sentence in enumerate(parts):
            if not _is_claim(sentence, self.min_words):
                continue
            judged += 1
            if support(sentence, passages) < self.threshold:
                unsupported.append(i)
            elif self.require_citations and not _CITATION.search(sentence):
                uncited.append(i)
        bad = sorted(set(unsupported) | set(uncited))
        if not bad:
            return Verdict.allow()
        score = len(bad) / max(1, judged)
        reason = (f"{len(unsupported)} of {judged} claim(s) are not supported by the context"
                  + (f", {len(uncited)} lack a citation" if uncited else "") + ".")
        meta = {"unsupported": unsupported, "uncited": uncited}
        if self.action == "flag":
            return Verdict("allow", score, "flagged: " + reason, None, "ungrounded", meta)
        if self.action == "remove":
            kept = [s for i, s in enumerate(parts) if i not in set(bad)]
            if any(len(_content(s)) >= self.min_words for s in kept):
                return Verdict("fix", score, reason, " ".join(kept), "ungrounded", meta)
            return Verdict("block", score, reason, None, "ungrounded", meta)
        return Verdict(self.action, score, reason, None, "ungrounded", meta)  # type: ignore[arg-type]
