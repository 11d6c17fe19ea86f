"""What hands a conversation to a person: the user asking for one, a low confidence score, or
repeated failures in one conversation (a guard's `escalate` verdict calls the API directly).

The user-request detector looks for a *request* — a verb of talking in a wish or imperative
form, or a transfer, aimed at a person — so look-alikes that merely mention one do not fire:

>>> asks_for_person("Can I speak to a human agent, please?")
True
>>> asks_for_person("The person I talked to said my refund was approved.")
False
>>> read_confidence({"answer": "...", "meta": {"score": 0.31}}, "meta.score")
0.31
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from shipyard.state.base import KeyValue

__all__ = [
    "FailureCounter",
    "UserRequestDetector",
    "asks_for_person",
    "last_user_text",
    "read_confidence",
]

_WISH = (r"(?:i\s+(?:really\s+)?(?:want|need|would\s+like|'d\s+like|wish|demand|insist)\s+to"
         r"|i\s+(?:have|got)\s+to|i\s+must|(?:can|could|may)\s+i|let\s+me|please|pls"
         r"|i\s+wanna|i\s+need\s+you\s+to\s+let\s+me)")
_PERSON = (r"(?:(?:a|an|some|one\s+of\s+your|your|the)\s+)?(?:real|live|actual|human|proper)?\s*"
           r"(?:human(?:\s+being|\s+agent)?|person|agent|representative|rep|operator|someone"
           r"|somebody|manager|supervisor|member\s+of\s+(?:staff|your\s+team)"
           r"|customer\s+(?:service|support)(?:\s+agent|\s+rep(?:resentative)?)?)\b")
_HUMAN_OBJECT = (r"(?:(?:a|an|to\s+a|to\s+an)\s+)?(?:(?:real|live|actual)\s+(?:person|human|agent)"
                 r"|human(?:\s+(?:being|agent))?(?=\s*(?:$|[.,!?;]|please|now|instead|asap|who"
                 r"|to\s+(?:help|talk|speak)|here))"
                 r"|(?:customer\s+(?:service|support)\s+)?representative|live\s+operator)")
_ENGLISH = [
    # "can I talk to a person", "talk to a human please", "I want to speak with an agent"
    rf"(?:^|[.!?;:,]\s*|\b{_WISH}\s+)(?:talk|speak|chat)\s+(?:to|with)\s+{_PERSON}",
    # "I want a real person", "get me a human", "give me a representative"
    rf"\b(?:i\s+(?:want|need|would\s+like|'d\s+like)|give\s+me|get\s+me|send\s+me)\s+"
    rf"{_HUMAN_OBJECT}",
    # "transfer me to an agent", "connect me with someone", "put me through to a person"
    rf"\b(?:transfer|connect|forward|escalate)\s+(?:me|this|my\s+(?:case|ticket|chat))\s+"
    rf"(?:to|with)\s+{_PERSON}",
    r"\bput\s+me\s+through\s+to\s+" + _PERSON,
    # a message that is nothing but the ask: "human agent please", "real person!", "agent"
    r"^(?:a\s+)?(?:real\s+person|human(?:\s+agent)?|live\s+agent|agent|representative|operator"
    r"|person)(?:\s*,?\s*(?:please|pls|now))?\s*[.!]*$",
    r"\bis\s+there\s+(?:a|any)\s+(?:real\s+|human\s+|live\s+)?(?:person|human|agent)\s+"
    r"(?:i\s+can|to)\s+(?:talk|speak)\s+to\b",
]
_OTHER_LANGUAGES = [
    # French: "je veux parler à un conseiller", "parler à une vraie personne"
    r"\b(?:parler|discuter)\s+(?:à|a|avec)\s+(?:un|une|quelqu'un)\s*(?:vrai|vraie"
    r"|d'humain)?\s*(?:humain|personne|agent|conseiller|conseillère|opérateur|operateur)?\b",
    r"\bun\s+(?:vrai\s+)?humain\s*,?\s*(?:svp|s'il\s+vous\s+plaît)",
    # German: "ich möchte mit einem Menschen sprechen"
    r"\bmit\s+(?:einem|einer)\s+(?:echten\s+|richtigen\s+)?(?:menschen|mitarbeiter(?:in)?|person"
    r"|berater(?:in)?)\s+(?:sprechen|reden)\b",
    # Spanish: "quiero hablar con una persona"
    r"\b(?:hablar|comunicarme)\s+con\s+(?:una\s+persona|un\s+humano|un\s+agente|alguien"
    r"|un\s+representante|un\s+asesor)\b",
    # Italian: "vorrei parlare con un operatore"
    r"\bparlare\s+con\s+(?:una\s+persona|un\s+operatore|un\s+essere\s+umano|un\s+umano"
    r"|un\s+agente|qualcuno)\b",
    # Portuguese: "quero falar com um atendente"
    r"\bfalar\s+com\s+(?:uma\s+pessoa|um\s+atendente|um\s+humano|um\s+agente|algu[eé]m)\b",
    # Dutch: "ik wil met een medewerker spreken"
    r"\bmet\s+een\s+(?:echte?\s+)?(?:mens|persoon|medewerker)\s+(?:spreken|praten)\b",
]
# Matched against normalised (lower-cased) text, so no IGNORECASE: it is several times slower.
_BUILTIN = re.compile("|".join(f"(?:{p})" for p in _ENGLISH + _OTHER_LANGUAGES), re.MULTILINE)
# Quoted speech is someone else's words: "the bot kept saying 'talk to a person'".
_QUOTED = re.compile(r"\"[^\"]{0,200}\"|“[^”]{0,200}”|(?<!\w)'[^']{0,200}'(?!\w)")


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    return re.sub(r"\s+", " ", text).strip().lower()


# Every built-in pattern names one of these words. Plain substring tests on the lower-cased
# text are far cheaper than any regex, so most messages (which name none) are answered at once,
# and the patterns run only on the sentences that do.
_KEYWORDS = (
    "human", "person", "agent", "represent", " rep", "operator", "someone", "somebody",
    "manager", "supervisor", "staff", "team", "customer", "humain", "personne", "conseill",
    "quelqu", "opérat", "operat", "mensch", "mitarbeiter", "berater", "persona", "humano",
    "asesor", "alguien", "umano", "qualcuno", "pessoa", "atendente", "algu", " mens",
    "persoon", "medewerker")
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def _names_someone(text: str) -> bool:
    return any(word in text for word in _KEYWORDS)


def asks_for_person(text: str, extra: Sequence[re.Pattern[str]] = ()) -> bool:
    """True when `text` asks to be handed to a person (built-in phrases, then `extra`)."""
    low = text.lower()
    if _names_someone(" " + low):
        for sentence in _SENTENCES.split(low):
            if _names_someone(" " + sentence) and _BUILTIN.search(
                    _QUOTED.sub(" ", _normalise(sentence))):
                return True
    if not extra:
        return False
    plain = _QUOTED.sub(" ", _normalise(text))
    return any(p.search(plain) for p in extra)


class UserRequestDetector:
    """`asks_for_person` with a config's extra `phrases` compiled once."""

    def __init__(self, phrases: Iterable[str] = ()) -> None:
        self.extra = [re.compile(p, re.IGNORECASE) for p in phrases]

    def __call__(self, text: str) -> bool:
        return asks_for_person(text, self.extra)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(str(p.get("text", "")) for p in content
                        if isinstance(p, dict) and p.get("type") == "text")
    return ""


def last_user_text(messages: Any) -> str:
    """The text of the last user message of a chat request ('' when there is none)."""
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
    return ""


def read_confidence(data: Any, path: str) -> float | None:
    """The number at dotted `path` in `data` (or a header value), or None when absent/invalid."""
    value = data
    if isinstance(data, dict):
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


class FailureCounter:
    """Failed requests per conversation in a sliding window, in the shared state backend (so
    replicas sharing Redis count together). Read-modify-write: two failures at the same instant
    on two replicas may count as one, which at worst delays an escalation by one failure."""

    def __init__(self, kv: KeyValue, *, prefix: str = "esc:fail:") -> None:
        self.kv = kv
        self.prefix = prefix

    def _key(self, tenant_id: str, conversation_id: str) -> str:
        return f"{self.prefix}{tenant_id}:{conversation_id}"

    async def add(self, tenant_id: str, conversation_id: str, window_s: float) -> int:
        """Record one failure; returns the failures inside the window, this one included."""
        key = self._key(tenant_id, conversation_id)
        now = time.time()
        raw = await self.kv.get(key)
        stamps: list[float] = orjson.loads(raw) if raw else []
        stamps = [*[t for t in stamps if now - t < window_s][-999:], now]
        await self.kv.set(key, orjson.dumps(stamps), window_s)
        return len(stamps)

    async def reset(self, tenant_id: str, conversation_id: str) -> None:
        await self.kv.set(self._key(tenant_id, conversation_id), b"[]", 1.0)
