"""Guards on what comes out: JSON schema, system-prompt leakage, refusals, banned terms,
toxicity. (PII leakage is `shipyard.guards.inputs.PIIGuard` in an output list; grounding is
`shipyard.guards.grounding`.)

>>> g = JSONSchemaGuard(schema={"type": "object", "required": ["city"]})
>>> g.check(Subject('{"town": "Oslo"}', "output")).metadata["reask"][:40]
'The answer must be JSON that matches the'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from shipyard.guards.base import Guard, Subject, Verdict
from shipyard.guards.normalize import fold
from shipyard.providers.loading import import_object

__all__ = ["BannedGuard", "JSONSchemaGuard", "RefusalGuard", "SystemPromptLeakGuard",
           "ToxicityGuard"]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _validator(schema: dict[str, Any]) -> Any:
    # jsonschema is a core dependency but heavy to import: only JSON-schema guards load it.
    import jsonschema
    from jsonschema.exceptions import SchemaError

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"schema is not a valid JSON Schema: {exc.message}") from None
    return cls(schema)


def _request_schema(request: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
    """(wants JSON, schema) from an OpenAI `response_format`."""
    fmt = (request or {}).get("response_format")
    if not isinstance(fmt, dict):
        return False, None
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return True, schema if isinstance(schema, dict) else None
    return fmt.get("type") == "json_object", None


class JSONSchemaGuard(Guard):
    """The answer must be JSON matching `schema` (or the request's `response_format` schema).

    On failure the verdict blocks with feedback, and the gateway re-asks the model with the
    validation error up to the guard's `retries`; an answer wrapped in a ```json fence is
    fixed by unwrapping it. Judges complete answers only (not stream windows).
    """

    name = "json_schema"
    streamable = False

    def __init__(self, *, schema: dict[str, Any] | None = None,
                 from_request: bool = True) -> None:
        self.schema = schema
        self.validator = _validator(schema) if schema is not None else None
        self.from_request = from_request
        self._cache: dict[bytes, Any] = {}

    def _validator_for(self, subject: Subject) -> tuple[bool, Any]:
        if self.validator is not None:
            return True, self.validator
        if not self.from_request:
            return False, None
        wants, schema = _request_schema(subject.request)
        if schema is None:
            return wants, None
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        validator = self._cache.get(key)
        if validator is None:
            try:
                validator = _validator(schema)
            except ValueError:
                return True, None  # the upstream would have refused a broken schema already
            if len(self._cache) < 256:
                self._cache[key] = validator
        return True, validator

    def check(self, subject: Subject) -> Verdict:
        wants, validator = self._validator_for(subject)
        if not wants or subject.partial:
            return Verdict.allow()
        text = subject.text.strip()
        fixed: str | None = None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            fenced = _FENCE.search(text)
            try:
                value = orjson.loads(fenced.group(1)) if fenced else None
                fixed = fenced.group(1).strip() if fenced else None
            except orjson.JSONDecodeError:
                fixed = None
            if fixed is None:
                return self._invalid(f"it is not valid JSON ({str(exc).split(':')[0]})")
        if validator is not None:
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
            if errors:
                first = errors[0]
                path = "/".join(str(p) for p in first.absolute_path) or "(root)"
                return self._invalid(f"at '{path}': {first.message}")
        elif not isinstance(value, dict):
            return self._invalid("a JSON object was asked for")
        if fixed is not None:
            return Verdict.fix(fixed, "Unwrapped the JSON answer from a code fence.",
                               score=0.2, code="schema_unwrapped")
        return Verdict.allow()

    @staticmethod
    def _invalid(problem: str) -> Verdict:
        return Verdict.block(
            f"The answer does not match the required JSON schema: {problem}.",
            code="schema_invalid",
            metadata={"reask": "The answer must be JSON that matches the schema, with no "
                               f"other text; {problem}."})


_WORD = re.compile(r"[a-z0-9]+")


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(fold(text))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class SystemPromptLeakGuard(Guard):
    """Stop answers that reveal the system prompt: a `canary` token planted in the prompt
    appears, or the answer repeats `min_shingles` or more runs of `n` words from the prompt
    (punctuation and case ignored), or covers `coverage` of the prompt's runs.

    The prompt is `system_prompt` when given, else the request's system message.
    """

    name = "system_prompt_leak"

    def __init__(self, *, canary: str | Sequence[str] | None = None,
                 system_prompt: str | None = None, n: int = 6, min_shingles: int = 2,
                 coverage: float = 0.3) -> None:
        self.canaries = [canary] if isinstance(canary, str) else list(canary or [])
        self.n = n
        self.min_shingles = min_shingles
        self.coverage = coverage
        self.system_prompt = system_prompt
        self._fixed = _shingles(system_prompt, n) if system_prompt else None
        self._cache: tuple[str, set[tuple[str, ...]]] | None = None

    def _prompt_shingles(self, subject: Subject) -> set[tuple[str, ...]]:
        if self._fixed is not None:
            return self._fixed
        prompt = subject.system_prompt or ""
        if self._cache is None or self._cache[0] != prompt:
            self._cache = (prompt, _shingles(prompt, self.n))
        return self._cache[1]

    def check(self, subject: Subject) -> Verdict:
        text = subject.text
        for canary in self.canaries:
            if canary and canary in text:
                return Verdict.block("The answer contains the system prompt's canary token.",
                                     code="system_prompt_leak")
        prompt = self._prompt_shingles(subject)
        if not prompt:
            return Verdict.allow()
        shared = len(prompt & _shingles(text, self.n))
        ratio = shared / len(prompt)
        if shared >= self.min_shingles and (shared >= 3 or ratio >= self.coverage or
                                            len(prompt) < 3):
            return Verdict.block(
                f"The answer repeats the system prompt ({shared} passages of {self.n} words, "
                f"{ratio:.0%} of it).", score=min(1.0, 0.5 + ratio), code="system_prompt_leak")
        return Verdict.allow(ratio)


_REFUSALS = re.compile(
    r"\b(i'?m sorry,? but i (can ?not|can'?t|won'?t|am unable|'m unable)|i (can ?not|can'?t|"
    r"won'?t|am unable to|'m unable to|am not able to|'m not able to) (help|assist|provide|"
    r"comply|do that|answer|share|fulfil)|as an ai( language model)?,? i|i (must|have to) "
    r"(decline|refuse)|i'?m not (allowed|permitted|able) to|this (request )?(goes against|"
    r"violates) (my|the) (guidelines|policies|policy)|i apologi[sz]e,? but i (can|can'?t|"
    r"cannot|won'?t))")


class RefusalGuard(Guard):
    """Notice when the model refused: escalate it to a person (default), or `block` to answer
    with the service's own polite message. Use `on_trip: flag` to only count refusals."""

    name = "refusal"

    def __init__(self, *, action: str = "escalate") -> None:
        if action not in ("escalate", "block"):
            raise ValueError(f"action is {action!r}; use 'escalate' or 'block'")
        self.action = action

    def check(self, subject: Subject) -> Verdict:
        head = fold(subject.text[:400])
        if not _REFUSALS.search(head):
            return Verdict.allow()
        reason = "The model refused to answer."
        if self.action == "block":
            return Verdict.block(reason, score=0.8, code="refusal")
        return Verdict.escalate(reason, score=0.8, code="refusal")


class BannedGuard(Guard):
    """Banned `terms` (whole words, case- and accent-insensitive) and `regexes`: `block`
    (default) or `fix` (each match replaced with `replacement`)."""

    name = "banned"

    def __init__(self, *, terms: Sequence[str] = (), regexes: Sequence[str] = (),
                 action: str = "block", replacement: str = "[removed]") -> None:
        if action not in ("block", "fix"):
            raise ValueError(f"action is {action!r}; use 'block' or 'fix'")
        if not terms and not regexes:
            raise ValueError("give 'terms' or 'regexes' (or both)")
        parts = [rf"\b{re.escape(t)}\b" for t in terms if t.strip()]
        for pattern in regexes:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile ({exc})") from None
            parts.append(f"(?:{pattern})")
        self.regex = re.compile("|".join(parts), re.IGNORECASE)
        self.action = action
        self.replacement = replacement

    def check(self, subject: Subject) -> Verdict:
        text = subject.text
        hits = len(self.regex.findall(text))
        folded = fold(text) if not text.isascii() else text
        if not hits and folded is not text:
            hits = len(self.regex.findall(folded))
            text = folded if hits else text
        if not hits:
            return Verdict.allow()
        reason = f"The text contains {hits} banned term(s)."
        if self.action == "fix":
            return Verdict.fix(self.regex.sub(self.replacement, text), reason, code="banned")
        return Verdict.block(reason, code="banned")


_SEVERE = ("kill yourself", "kys", "go die", "i hope you die", "you should die",
           "subhuman", "worthless piece of", "nazi scum")
_INSULTS = ("idiot", "moron", "stupid", "dumb", "loser", "pathetic", "imbecile", "cretin",
            "retard", "scum", "trash", "garbage human", "shut up", "dumbass", "jackass",
            "asshole", "bastard", "bitch", "shit", "fuck", "fucking", "fucker", "motherfucker",
            "dick", "prick", "cunt", "twat", "wanker", "piss off", "screw you", "hate you")


def _word_regex(words: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")


class ToxicityGuard(Guard):
    """Abusive language, from word lists by default: one severe phrase, or `max_mild` or more
    insults/profanities, blocks. `scorer: package.module:function` plugs in a model returning
    a toxicity probability for a text; it blocks at `threshold`."""

    name = "toxicity"

    def __init__(self, *, max_mild: int = 2, extra_words: Sequence[str] = (),
                 scorer: str | None = None, threshold: float = 0.8,
                 action: str = "block") -> None:
        if action not in ("block", "escalate"):
            raise ValueError(f"action is {action!r}; use 'block' or 'escalate'")
        self.severe = _word_regex(_SEVERE)
        self.mild = _word_regex(list(_INSULTS) + [w.lower() for w in extra_words])
        self.max_mild = max_mild
        self.threshold = threshold
        self.action = action
        self.scorer: Callable[[str], float] | None = (
            import_object(scorer, key="toxicity.scorer") if scorer else None)
        self.threaded = self.scorer is not None

    def check(self, subject: Subject) -> Verdict:
        text = fold(subject.text)
        score = 0.0
        if self.severe.search(text):
            score = 1.0
        else:
            mild = len(self.mild.findall(text))
            score = min(1.0, mild / max(1, self.max_mild)) if mild else 0.0
            if self.scorer is not None:
                score = max(score, float(self.scorer(subject.text)) / self.threshold)
        if score < 1.0:
            return Verdict.allow(score)
        reason = "The text contains abusive or toxic language."
        if self.action == "escalate":
            return Verdict.escalate(reason, code="toxicity")
        return Verdict.block(reason, code="toxicity")
