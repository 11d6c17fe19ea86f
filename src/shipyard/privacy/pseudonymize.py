"""Reversible pseudonymization: consistent typed placeholders, and the way back.

The model sees `<PERSON_1>`, the user sees the name. A `Pseudonyms` table gives each distinct
value one placeholder for as long as the table lives (one request, or one conversation when it
is saved and loaded again), so "bob@example.com" is `<EMAIL_1>` in every message.

    >>> names = Pseudonyms()
    >>> engine = PIIEngine()
    >>> text = "mail bob@example.com or bob@example.com"
    >>> masked = engine.anonymize(text, engine.analyze(text), Pseudonymize(names))
    >>> masked
    'mail <EMAIL_1> or <EMAIL_1>'
    >>> names.restore(masked)
    'mail bob@example.com or bob@example.com'

Streams arrive in pieces, and a placeholder can be split across them ("<EMA" + "IL_1>");
`StreamRestorer` holds back a possible placeholder prefix until it is complete. `LeakWindow`
checks streamed text for PII with a short hold-back window so an entity split across chunks is
still found before any of it is sent.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import orjson

from shipyard.privacy.engine import PIIEngine
from shipyard.privacy.operators import Operator
from shipyard.privacy.recognizers import Finding

__all__ = ["LeakWindow", "Pseudonymize", "Pseudonyms", "StreamRestorer", "TypeMarker"]

_PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*?)_(\d{1,6})>")
_PARTIAL = re.compile(r"<[A-Z0-9_]{0,40}$")
_MAX_PLACEHOLDER = 48


class Pseudonyms:
    """Value ⇄ placeholder table, numbered per entity type in order of first appearance."""

    def __init__(self, forward: dict[str, str] | None = None) -> None:
        self.forward: dict[str, str] = dict(forward or {})  # value -> placeholder
        self.reverse: dict[str, str] = {p: v for v, p in self.forward.items()}
        self._counts: Counter[str] = Counter()
        for placeholder in self.reverse:
            match = _PLACEHOLDER.fullmatch(placeholder)
            if match:
                entity, number = match.group(1), int(match.group(2))
                self._counts[entity] = max(self._counts[entity], number)
        self._originals: re.Pattern[str] | None = None
        self.changed = False

    def __len__(self) -> int:
        return len(self.forward)

    def placeholder(self, entity: str, value: str) -> str:
        """The placeholder of `value`, made (as `<ENTITY_n>`) on first sight."""
        found = self.forward.get(value)
        if found is None:
            self._counts[entity] += 1
            found = f"<{entity}_{self._counts[entity]}>"
            self.forward[value] = found
            self.reverse[found] = value
            self._originals = None
            self.changed = True
        return found

    def restore(self, text: str) -> str:
        """`text` with every known placeholder turned back into its value."""
        if "<" not in text or not self.reverse:
            return text
        reverse = self.reverse
        return _PLACEHOLDER.sub(lambda m: reverse.get(m.group(0), m.group(0)), text)

    def hide(self, text: str) -> str:
        """`text` with every known value replaced by its placeholder (longest value first)."""
        if not self.forward:
            return text
        if self._originals is None:
            values = sorted(self.forward, key=len, reverse=True)
            self._originals = re.compile("|".join(re.escape(v) for v in values))
        forward = self.forward
        return self._originals.sub(lambda m: forward[m.group(0)], text)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.forward)

    @classmethod
    def from_bytes(cls, data: bytes) -> Pseudonyms:
        loaded = orjson.loads(data)
        if not isinstance(loaded, dict):
            raise ValueError("a pseudonym table must be a JSON object")
        return cls({str(k): str(v) for k, v in loaded.items()})


class Pseudonymize(Operator):
    """Replace each finding with its placeholder in a shared `Pseudonyms` table."""

    def __init__(self, table: Pseudonyms) -> None:
        self.table = table

    def replace_one(self, finding: Finding) -> str:
        return self.table.placeholder(finding.entity, finding.text)


class TypeMarker(Operator):
    """Replace each finding with its bare type, `<EMAIL>`: unnumbered, so never restored."""

    def replace_one(self, finding: Finding) -> str:
        return f"<{finding.entity}>"


class StreamRestorer:
    """Restore placeholders in text that arrives in pieces.

    >>> table = Pseudonyms({"Ada": "<PERSON_1>"})
    >>> r = StreamRestorer(table)
    >>> r.feed("Hello <PER") + r.feed("SON_1>!") + r.flush()
    'Hello Ada!'
    """

    def __init__(self, table: Pseudonyms) -> None:
        self.table = table
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        cut = text.rfind("<")
        if cut != -1 and len(text) - cut <= _MAX_PLACEHOLDER and _PARTIAL.match(text, cut):
            self._held = text[cut:]
            text = text[:cut]
        return self.table.restore(text)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self.table.restore(text)


class LeakWindow:
    """Find PII in streamed text before it is sent, holding back the last `window` characters.

    Text is released up to a whitespace boundary at least `window` characters behind the end;
    a finding that reaches into the held part moves the boundary to its start, so an entity
    split across chunks is always seen whole. `on_findings` learns what was found (counts, not
    values) and `operator` says what replaces it.
    """

    def __init__(self, engine: PIIEngine, operator: Operator, *, window: int = 64,
                 on_findings: Callable[[Sequence[Finding]], None] | None = None) -> None:
        self.engine = engine
        self.operator = operator
        self.window = window
        self.on_findings = on_findings
        self._held = ""

    def feed(self, text: str) -> str:
        held = self._held + text
        if len(held) <= self.window:
            self._held = held
            return ""
        cut = len(held) - self.window
        space = max(held.rfind(" ", 0, cut + 1), held.rfind("\n", 0, cut + 1))
        if space > 0:
            cut = space + 1
        elif len(held) < 8 * self.window:
            self._held = held  # one long word so far: wait for its end
            return ""
        findings = self.engine.analyze(held)
        for f in findings:
            if f.start < cut < f.end:
                cut = f.start
        out, self._held = held[:cut], held[cut:]
        return self._clean(out, [f for f in findings if f.end <= cut])

    def flush(self) -> str:
        held, self._held = self._held, ""
        return self._clean(held, self.engine.analyze(held)) if held else ""

    def _clean(self, text: str, findings: Sequence[Finding]) -> str:
        if not findings:
            return text
        if self.on_findings is not None:
            self.on_findings(findings)
        return self.engine.anonymize(text, findings, self.operator)
