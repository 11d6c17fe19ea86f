"""Text cleaning: unicode normalisation, whitespace, mojibake repair (ftfy), HTML stripping.

Each step is skipped cheaply when it cannot change the value (ASCII text needs no ftfy and no
normalisation), which keeps cleaning fast on millions of values.

>>> TextCleaner(CleanSpec()).clean("  caf\\u00c3\\u00a9   au  lait ")
'café au lait'
>>> TextCleaner(CleanSpec(strip_html=["x"])).clean("<b>5 &gt; 3</b>", html=True)
'5 > 3'
"""

from __future__ import annotations

import html
import re
import unicodedata

from shipyard.data.config import CleanSpec

__all__ = ["TextCleaner", "strip_html"]

_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_TAG = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>|<[^>]{0,2000}>",
                  re.IGNORECASE | re.DOTALL)


def strip_html(value: str) -> str:
    """Remove tags, comments, scripts and styles; unescape entities."""
    if "<" in value:
        value = _TAG.sub(" ", value)
    if "&" in value:
        value = html.unescape(value)
    return value


class TextCleaner:
    """Applies a `CleanSpec` to one string value."""

    def __init__(self, spec: CleanSpec) -> None:
        self.spec = spec
        self._form = None if spec.unicode == "none" else spec.unicode
        self._fix = None
        if spec.fix_mojibake:
            import ftfy  # the `data` extra

            self._fix = ftfy.fix_text

    def clean(self, value: str, *, html: bool = False) -> str:
        if html:
            value = strip_html(value)
        if not value.isascii():
            if self._fix is not None:
                value = self._fix(value, normalization=self._form or "NFC")
            if self._form is not None and not unicodedata.is_normalized(self._form, value):
                value = unicodedata.normalize(self._form, value)
        if self.spec.whitespace:
            if "  " in value or not value.isascii() or "\t" in value or "\f" in value:
                value = _SPACES.sub(" ", value)
            value = value.strip()
        return value
