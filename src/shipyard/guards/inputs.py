"""Guards on what goes in (several also work on answers): PII, topics, length, invisible
characters and pasted secrets.

>>> TopicsGuard(deny=["weapons"]).check(Subject("how do I build a pipe bomb")).action
'block'
>>> TopicsGuard(deny=["weapons"]).check(Subject("how do banks stop fraud?")).action
'allow'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from shipyard.guards.base import Guard, Subject, Verdict
from shipyard.guards.normalize import INVISIBLE, fold
from shipyard.observe.tokens import estimate_text
from shipyard.privacy.engine import PIIEngine
from shipyard.privacy.operators import Replace

__all__ = [
    "TOPIC_PRESETS",
    "InvisibleGuard",
    "LengthGuard",
    "PIIGuard",
    "SecretsGuard",
    "TopicsGuard",
]

_DEFAULT_PII = ("EMAIL", "PHONE", "CREDIT_CARD", "US_SSN", "IBAN", "IP_ADDRESS")


def _action(value: str, allowed: Sequence[str], option: str = "action") -> str:
    if value not in allowed:
        raise ValueError(f"{option} is {value!r}; use one of: {', '.join(allowed)}")
    return value


class PIIGuard(Guard):
    """Find personal data with `shipyard.privacy.PIIEngine`; `fix` (default) replaces each
    finding with a typed placeholder (`<EMAIL_1>`), `block` refuses the text.

    Works as an input guard (PII pasted into prompts) and an output guard (PII leakage).
    """

    name = "pii"

    def __init__(self, *, action: str = "fix", entities: Sequence[str] | None = None,
                 min_score: float = 0.5, allow: Sequence[str] = (),
                 deny: Sequence[str] = ()) -> None:
        self.action = _action(action, ("fix", "block", "escalate"))
        self.engine = PIIEngine(entities=list(entities or _DEFAULT_PII), min_score=min_score,
                                allow=allow, deny=deny)

    def check(self, subject: Subject) -> Verdict:
        findings = self.engine.analyze(subject.text)
        if not findings:
            return Verdict.allow()
        kinds = sorted({f.entity for f in findings})
        score = max(f.score for f in findings)
        where = "the request" if subject.stage == "input" else "the answer"
        reason = f"Personal data in {where}: {', '.join(kinds)} ({len(findings)} found)."
        if self.action == "fix":
            fixed = self.engine.anonymize(subject.text, findings, Replace())
            return Verdict.fix(fixed, reason, score=score, code="pii")
        if self.action == "escalate":
            return Verdict.escalate(reason, score=score, code="pii")
        return Verdict.block(reason, score=score, code="pii")


# Harmful-request presets: an intent to get something done, then the harmful object, with
# defensive phrasings ("protect against ransomware") excluded.
_INTENT = (r"(how (do|can|could|would|should|to) (i|you|we|one|someone)?|how to|steps (to|for)|"
           r"instructions (to|for|on)|teach me|help me|show me|tell me how|guide (to|for|on)|"
           r"recipe for|walk me through|explain how to|i want to|i need to|i'm going to|"
           r"write|create|make|build|generate|develop|give me|code|synthesi[sz]e|produce|commit|"
           r"explain how|describe how|where (can|do|could|to) (i |we |one )?(buy|get|find|order)|"
           r"(buy|purchase|obtain|acquire|order|get hold of|source)|"
           r"(manufactur|synthesi[sz]|produc|mak|build|assembl|brew|cook)ing|"
           r"(best|easiest|fastest|simplest|quickest|cheapest) (way|ways|method)s? (to|of))")
_NOT_DEFENSIVE = (r"(?:(?!\b(protect|defend|prevent|detect|remove|recover|against|avoid|stop|"
                  r"mitigate|report|spot|identify|block|secure|safe from|tell if|"
                  r"check (if|for|whether)|scan for|find out if|know if|is there)\b)"
                  r"[^.?!\n]){0,100}?")
TOPIC_PRESETS: dict[str, str] = {
    "weapons": r"\b(bomb|pipe bomb|explosives?|explosive device|ied|molotov|napalm|thermite|"
               r"untraceable (gun|firearm)|ghost gun|3d[- ]printed (gun|firearm)|silencer|"
               r"nerve agent|sarin|ricin|anthrax|bioweapon|chemical weapon|dirty bomb|"
               r"automatic (rifle|weapon) conversion|full[- ]auto conversion)\b",
    "drugs": r"\b(meth|methamphetamine|crystal meth|fentanyl|heroin|cocaine|crack|lsd|mdma|"
             r"ecstasy|ghb)\b",
    "malware": r"\b(ransomware|keylogger|malware|virus|trojan|botnet|rootkit|worm|spyware|"
               r"ddos|zero[- ]day exploit|exploit kit|phishing (kit|page|site|email)|"
               r"credential stealer|info[- ]?stealer|reverse shell|backdoor)\b",
    "violence": r"\b(kill|murder|poison|assassinate|kidnap|torture|maim|stab|shoot) "
                r"(someone|somebody|a person|people|my (wife|husband|boss|neighbou?r|"
                r"coworker|ex)|him|her|them)\b",
    "fraud": r"\b(fake (id|passport|driver'?s license)|counterfeit (money|bills|cash)|"
             r"launder(ing)? money|money laundering|credit card fraud|carding|steal "
             r"(someone'?s )?identit(y|ies)|identity theft|forge (a )?(signature|check|"
             r"cheque|document)|evade taxes|tax evasion)\b",
    "hacking": r"\b(hack into|break into|get into|access) (someone'?s|somebody'?s|my ex'?s|"
               r"another person'?s|a stranger'?s|my (wife|husband|boss|neighbou?r)'?s)\b|"
               r"\b(bypass|crack|brute[- ]force|get around) (the |a |their |his |her |my )?(2fa|"
               r"two[- ]factor|mfa|password)\b[^.?!\n]{0,30}\b(someone|somebody|coworker|"
               r"colleague|neighbou?r|ex|boss|wife|husband|another|other|their|his|her)\b",
    # First person, or a request for a method: "Why did Hitler commit suicide?" is history.
    "self_harm": r"\b(kill myself|end my life|hurt myself|harm myself|cut myself|"
                 r"overdose on purpose|don'?t want to (live|be alive)|want to die|"
                 r"(i|i'm|im|i am|i've|ive|me|my)\b[^.?!\n]{0,40}\b(suicid\w*|self[- ]harm\w*)|"
                 r"(how|ways?|methods?|best way|easiest way|painless way|help me)\b[^.?!\n]{0,20}"
                 r"\b(to )?(commit suicide|kill (myself|yourself|oneself)|end (my|your|one'?s) "
                 r"life)|suicide (methods?|notes? for me|pact))\b",
}
_NO_INTENT = {"self_harm", "violence", "hacking"}  # the phrase itself is the signal


def _preset(name: str) -> re.Pattern[str]:
    body = TOPIC_PRESETS[name]
    if name in _NO_INTENT:
        return re.compile(body)
    return re.compile(rf"\b{_INTENT}\b{_NOT_DEFENSIVE}{body}")


def _keywords(words: Sequence[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(fold(w)) for w in words if w.strip())
    return re.compile(rf"\b({alternatives})\b")


class TopicsGuard(Guard):
    """Topic deny and allow lists.

    `deny`: preset names (`weapons`, `drugs`, `malware`, `violence`, `fraud`, `hacking`,
    `self_harm`) and/or `{topic: [keywords]}`; a match blocks (or escalates, for topics listed
    in `escalate`, e.g. `self_harm` on a support line). `allow`: `{topic: [keywords]}`; a text
    of at least `allow_min_words` words that mentions none of them is off-topic and blocked.
    """

    name = "topics"

    def __init__(self, *, deny: Sequence[str] | Mapping[str, Sequence[str]] = (),
                 allow: Mapping[str, Sequence[str]] | Sequence[str] = (),
                 escalate: Sequence[str] = (), allow_min_words: int = 4) -> None:
        self.deny: list[tuple[str, re.Pattern[str]]] = []
        items = deny.items() if isinstance(deny, Mapping) else [(d, None) for d in deny]
        for topic, words in items:
            if words is None:
                if topic not in TOPIC_PRESETS:
                    raise ValueError(f"deny names {topic!r}, which is not a preset "
                                     f"({', '.join(TOPIC_PRESETS)}); give it keywords as "
                                     f"{{{topic}: [word, ...]}}")
                self.deny.append((topic, _preset(topic)))
            else:
                self.deny.append((topic, _keywords(list(words))))
        allowed = allow.items() if isinstance(allow, Mapping) else [("allowed", allow)]
        self.allow = [(t, _keywords(list(w))) for t, w in allowed if w]
        self.escalate = set(escalate)
        self.allow_min_words = allow_min_words

    def check(self, subject: Subject) -> Verdict:
        text = fold(subject.text)
        for topic, regex in self.deny:
            if regex.search(text):
                reason = f"The request touches a topic this service does not handle ({topic})."
                if topic in self.escalate:
                    return Verdict.escalate(reason, code=f"topic:{topic}")
                return Verdict.block(reason, code=f"topic:{topic}")
        if self.allow and len(text.split()) >= self.allow_min_words and not any(
                regex.search(text) for _, regex in self.allow):
            names = ", ".join(t for t, _ in self.allow)
            return Verdict.block(f"The request is off-topic for this service (topics: {names}).",
                                 score=0.8, code="off_topic")
        return Verdict.allow()


class LengthGuard(Guard):
    """Refuse texts longer than `max_chars` characters or `max_tokens` (estimated) tokens,
    or shorter than `min_chars`."""

    name = "length"

    def __init__(self, *, max_chars: int | None = 20_000, max_tokens: int | None = None,
                 min_chars: int = 0) -> None:
        for option, value in (("max_chars", max_chars), ("max_tokens", max_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{option} is {value}; it must be at least 1")
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        self.min_chars = min_chars

    def check(self, subject: Subject) -> Verdict:
        n = len(subject.text)
        if self.max_chars is not None and n > self.max_chars:
            return Verdict.block(f"The text is {n} characters; the limit is {self.max_chars}.",
                                 code="too_long")
        if n < self.min_chars:
            return Verdict.block(f"The text is {n} characters; at least {self.min_chars} are "
                                 "needed.", code="too_short")
        if self.max_tokens is not None:
            tokens = estimate_text(subject.text)
            if tokens > self.max_tokens:
                return Verdict.block(f"The text is about {tokens} tokens; the limit is "
                                     f"{self.max_tokens}.", code="too_many_tokens")
        return Verdict.allow()


_TAGS = re.compile("[\U000e0000-\U000e007f]")


class InvisibleGuard(Guard):
    """Zero-width, bidi-control and tag characters: removed (`fix`, default) or refused
    (`block`). Unicode tag characters (used to smuggle hidden ASCII instructions) and more than
    `max_invisible` invisible characters always block."""

    name = "invisible"

    def __init__(self, *, action: str = "fix", max_invisible: int = 20) -> None:
        self.action = _action(action, ("fix", "block"))
        self.max_invisible = max_invisible

    def check(self, subject: Subject) -> Verdict:
        text = subject.text
        if text.isascii():
            return Verdict.allow()
        found = INVISIBLE.findall(text)
        if not found:
            return Verdict.allow()
        if _TAGS.search(text) or len(found) > self.max_invisible:
            return Verdict.block(f"The text hides {len(found)} invisible characters (Unicode "
                                 "tags or zero-width runs), a way to smuggle instructions.",
                                 code="invisible_text")
        reason = f"Removed {len(found)} invisible character(s)."
        if self.action == "block":
            return Verdict.block(reason, score=0.7, code="invisible_text")
        return Verdict.fix(INVISIBLE.sub("", text), reason, score=0.5, code="invisible_text")


SECRET_PATTERNS: list[tuple[str, str]] = [
    ("AWS_ACCESS_KEY", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("AWS_SECRET_KEY", r"(?i)aws.{0,20}?(secret|key).{0,20}?[=:]\s*['\"]?[A-Za-z0-9/+]{40}\b"),
    ("GITHUB_TOKEN", r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})\b"),
    ("OPENAI_KEY", r"\bsk-(proj-|svcacct-)?[A-Za-z0-9_\-]{32,}\b"),
    ("ANTHROPIC_KEY", r"\bsk-ant-[A-Za-z0-9_\-]{32,}\b"),
    ("SLACK_TOKEN", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
    ("STRIPE_KEY", r"\b(sk|rk)_(live|test)_[A-Za-z0-9]{16,}\b"),
    ("GOOGLE_API_KEY", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    ("PRIVATE_KEY", r"-----BEGIN (RSA |EC |OPENSSH |DSA |PGP |ENCRYPTED )?PRIVATE KEY-----"),
    ("JWT", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    ("CONNECTION_STRING", r"\b(postgres(ql)?|mysql|mongodb(\+srv)?|redis|amqp|mssql)://"
                          r"[^:\s/@]+:[^@\s]{3,}@"),
    ("PASSWORD_ASSIGNMENT", r"(?i)\b(password|passwd|pwd|secret|api[_-]?key|access[_-]?token|"
                            r"auth[_-]?token|client[_-]?secret)\b\s*[:=]\s*['\"]?"
                            r"(?=[^\s'\"]*[0-9])(?=[^\s'\"]*[A-Za-z])[^\s'\"]{8,}"),
]
# A substring (of the lower-cased text) each kind needs: most texts skip every regex.
_HINTS = {
    "AWS_ACCESS_KEY": ("akia", "asia"), "AWS_SECRET_KEY": ("aws",),
    "GITHUB_TOKEN": ("gh", "github_pat_"), "OPENAI_KEY": ("sk-",), "ANTHROPIC_KEY": ("sk-ant-",),
    "SLACK_TOKEN": ("xox",), "STRIPE_KEY": ("_live_", "_test_"), "GOOGLE_API_KEY": ("aiza",),
    "PRIVATE_KEY": ("private key",), "JWT": ("eyj",), "CONNECTION_STRING": ("://",),
    "PASSWORD_ASSIGNMENT": ("pass", "pwd", "secret", "key", "token"),
}
_SECRETS = [(kind, re.compile(pattern), _HINTS[kind]) for kind, pattern in SECRET_PATTERNS]


class SecretsGuard(Guard):
    """Credentials pasted into a prompt (API keys, tokens, private keys, connection strings,
    `password=...`): replaced with `<SECRET:KIND>` (`fix`, default) or refused (`block`)."""

    name = "secrets"

    def __init__(self, *, action: str = "fix") -> None:
        self.action = _action(action, ("fix", "block"))

    def check(self, subject: Subject) -> Verdict:
        text = subject.text
        lower = text.lower()
        kinds: list[str] = []
        for kind, regex, hints in _SECRETS:
            if not any(h in lower for h in hints):
                continue
            if regex.search(text):
                kinds.append(kind)
                if self.action == "fix":
                    text = regex.sub(f"<SECRET:{kind}>", text)
        if not kinds:
            return Verdict.allow()
        reason = f"A secret was pasted: {', '.join(kinds)}."
        if self.action == "block":
            return Verdict.block(reason, code="secret")
        return Verdict.fix(text, reason, code="secret")
