"""Trust settings of models and services: personal data (`pii:`), escalation to a human
(`escalation:`) and guards (`guards:`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from shipyard.config.base import FUNCTION_PATTERN, Section

__all__ = [
    "DEFAULT_ESCALATION_MESSAGE",
    "GUARD_KINDS",
    "EscalationConfig",
    "GuardKind",
    "GuardSpec",
    "GuardsConfig",
    "PIIConfig",
    "PIITarget",
]


PIITarget = Literal["request", "response", "traces"]


_PII_TARGETS: tuple[PIITarget, ...] = ("request", "response", "traces")


class PIIConfig(Section):
    mode: Literal["off", "detect", "redact", "pseudonymize", "block"] = Field(
        "off",
        description="`off`; `detect` (count PII on traces and metrics, change nothing); `redact` "
        "(the upstream sees typed placeholders such as `<EMAIL_1>`); `pseudonymize` (as redact, "
        "and placeholders in the answer are turned back into the caller's values); `block` "
        "(refuse requests that contain PII with a 400).")
    entities: list[str] | None = Field(
        None, description="Entity types to look for (default: every built-in recognizer).")
    apply_to: list[PIITarget] = Field(
        default_factory=lambda: list(_PII_TARGETS),
        description="`request`: clean what the upstream sees; `response`: replace PII the model "
        "produced itself with `<ENTITY>`; `traces`: store only cleaned payloads.")
    allow: list[str] = Field(
        default_factory=list, description="Values never treated as PII (case-insensitive).")
    deny: list[str] = Field(
        default_factory=list, description="Terms always treated as PII (entity `DENY_LIST`).")
    min_score: float = Field(
        0.5, ge=0, le=1, description="Findings scoring below this are ignored.")
    scope: Literal["request", "conversation"] = Field(
        "request",
        description="Placeholders are consistent within one request, or within a conversation "
        "named by the `x-shipyard-conversation` header (the table is kept encrypted in the state "
        "backend, per tenant).")
    conversation_ttl_s: float = Field(
        86_400.0, gt=0, description="How long a conversation's placeholder table is kept.")
    restore: bool = Field(
        True, description="In `pseudonymize` mode, give the caller back its own values.")
    stream_window_chars: int = Field(
        64, ge=16, le=4096,
        description="Streamed answers are checked for PII with this much text held back, so an "
        "entity split across chunks is seen whole.")


DEFAULT_ESCALATION_MESSAGE = (
    "Thank you for your patience. I have passed this conversation to a member of our team, "
    "who will follow up here as soon as possible. Your reference is {id}.")


class EscalationConfig(Section):
    """When and how a conversation is handed to a person (see docs/escalation.md)."""

    enabled: bool = Field(
        False, description="Turn escalation to a human on for this alias or service.")
    user_request: bool = Field(
        True, description="Escalate when the user asks for a person (\"talk to a human\", "
        "\"I want a real person\", in English, French, German, Spanish, Italian, Dutch and "
        "Portuguese).")
    phrases: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions (case-insensitive) that count as asking for a "
        "person, e.g. `\\bcall me back\\b`.")
    min_confidence: float | None = Field(
        None, ge=0, le=1,
        description="Escalate when the answer's confidence is below this (none: never). The "
        "score is read from the `x-shipyard-confidence` header of the upstream's answer or "
        "the `confidence_field` of its JSON output.")
    confidence_field: str = Field(
        "confidence",
        description="Dotted path of the confidence score in a service's output or a chat "
        "answer's JSON body (e.g. `confidence` or `meta.score`).")
    max_failures: int | None = Field(
        3, ge=1, le=1000,
        description="Escalate after this many failed, blocked or errored requests in one "
        "conversation (`x-shipyard-conversation` header) within `failure_window_s` "
        "(none: never).")
    failure_window_s: float = Field(
        300.0, gt=0, description="Window in which `max_failures` are counted, in seconds.")
    clean_pii: bool = Field(
        True, description="Store the ticket's conversation with personal data replaced by "
        "typed placeholders such as `<EMAIL_1>`.")
    message: str = Field(
        DEFAULT_ESCALATION_MESSAGE,
        description="What the user is told when a person takes over; `{id}` is replaced by "
        "the ticket id.")
    sla_s: float = Field(
        14_400.0, gt=0, description="Time within which a reviewer should answer a ticket; "
        "past it the ticket is overdue and the webhook gets one `escalation.overdue` event.")
    deliver_answer: bool = Field(
        True, description="Return the reviewer's answer as the assistant message of the next "
        "request in the same conversation (the client can also poll "
        "`GET /v1/escalations/ID`).")
    webhook_url: str | None = Field(
        None, description="URL that gets a JSON POST when a ticket opens or becomes overdue.")
    webhook_secret: SecretStr | None = Field(
        None, description="Signs deliveries per Standard Webhooks (`webhook-signature`; "
        "deprecated until 0.3.0: `x-shipyard-signature`); reference it as `{$env: NAME}`.")
    webhook_retries: int = Field(
        3, ge=0, le=10, description="Retries of a failed webhook delivery, with exponential "
        "backoff.")
    webhook_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest one webhook delivery attempt may take.")

    @field_validator("phrases")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for phrase in value:
            try:
                re.compile(phrase)
            except re.error as exc:
                raise ValueError(
                    f"phrase {phrase!r} is not a valid regular expression ({exc}); escape "
                    "special characters such as ( ) [ ] with a backslash") from None
        return value

    @field_validator("message")
    @classmethod
    def _message(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty; it is what the user reads")
        try:
            value.format(id="esc_x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"may only use the placeholder {{id}} (got a problem with {exc}); write "
                "literal braces as {{ and }}") from None
        return value

    @field_validator("confidence_field")
    @classmethod
    def _not_blank_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _webhook(self) -> EscalationConfig:
        if self.webhook_url is not None and not self.webhook_url.startswith(
                ("http://", "https://")):
            raise ValueError(f"webhook_url '{self.webhook_url}' must start with https:// or "
                             "http://")
        if self.webhook_secret is not None and self.webhook_url is None:
            raise ValueError("webhook_secret is set but webhook_url is not; set webhook_url "
                             "(the receiver) or remove webhook_secret")
        return self


@dataclass(frozen=True)
class GuardKind:
    """One built-in guard: where its class lives (imported when a config uses it) and what it
    does. The registry (`shipyard.guards.registry`), config validation and the guard reference
    in docs/guards.md all derive from `GUARD_KINDS`."""

    factory: str  # "package.module:Class"
    stages: str  # "input", "output" or "input, output"
    help: str


GUARD_KINDS: dict[str, GuardKind] = {
    "banned": GuardKind("shipyard.guards.outputs:BannedGuard", "input, output",
                        "Banned terms and regular expressions: block, or fix by replacing."),
    "grounding": GuardKind("shipyard.guards.grounding:GroundingGuard", "output",
                           "Each claim of an answer must be supported by the retrieved "
                           "context; unsupported sentences removed or the answer blocked."),
    "harmful": GuardKind("shipyard.guards.harmful:HarmfulGuard", "input",
                         "Requests for serious harm (weapons, attacks, abuse, crime): an "
                         "embedding-space classifier over the packaged MiniLM "
                         "(`shipyard[embeddings]`)."),
    "injection": GuardKind("shipyard.guards.injection:InjectionGuard", "input",
                           "Prompt injection and jailbreaks: patterns, an n-gram classifier "
                           "and optionally a fine-tuned MiniLM model (`embeddings: true`)."),
    "invisible": GuardKind("shipyard.guards.inputs:InvisibleGuard", "input",
                           "Zero-width, bidirectional and tag characters that hide text."),
    "json_schema": GuardKind("shipyard.guards.outputs:JSONSchemaGuard", "output",
                             "The answer must be JSON matching a schema; the model is re-asked "
                             "with the validation error."),
    "length": GuardKind("shipyard.guards.inputs:LengthGuard", "input, output",
                        "Caps on characters and lines."),
    "pii": GuardKind("shipyard.guards.inputs:PIIGuard", "input, output",
                     "Personal data: fix with typed placeholders (`<EMAIL_1>`) or block."),
    "refusal": GuardKind("shipyard.guards.outputs:RefusalGuard", "output",
                         "The model refused to answer (counted, or escalated)."),
    "secrets": GuardKind("shipyard.guards.inputs:SecretsGuard", "input, output",
                         "API keys, tokens and passwords pasted into text."),
    "system_prompt_leak": GuardKind("shipyard.guards.outputs:SystemPromptLeakGuard", "output",
                                    "The answer repeats the system prompt or its canary token."),
    "topics": GuardKind("shipyard.guards.inputs:TopicsGuard", "input",
                        "Denied topics (weapons, drugs, malware, self-harm, ...), blocked or "
                        "escalated."),
    "toxicity": GuardKind("shipyard.guards.outputs:ToxicityGuard", "output",
                          "Insults, threats and slurs in an answer."),
}
_GUARD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class GuardSpec(Section):
    """One guard in an input or output list: a built-in name or `module:function_or_Class`.

    Options of the guard sit beside `guard` (`{guard: topics, deny: [weapons]}`) or under
    `options`; a bare string is a guard with its defaults.
    """

    guard: str = Field(description="A built-in guard (" + ", ".join(
        f"`{name}`" for name in GUARD_KINDS) + "), one registered with "
        "`shipyard.guards.register`, or your own as `package.module:function` or "
        "`package.module:GuardClass`.")
    name: str | None = Field(None, description="Name on traces and metrics (default: `guard`).")
    timeout_ms: float | None = Field(
        None, gt=0, description="Longest this guard may take (default: the guard's own, "
        "e.g. 2000 for `injection` with `embeddings`, else the list's `timeout_ms`).")
    on_error: Literal["open", "closed"] | None = Field(
        None, description="When the guard raises or times out: `open` allows the request, "
        "`closed` blocks it (default: the list's `on_error`).")
    on_trip: Literal["default", "block", "fix", "escalate", "flag"] = Field(
        "default", description="What a tripped verdict does: `default` (what the guard said), "
        "`block`, `fix`, `escalate`, or `flag` (record only: shadow mode).")
    retries: int = Field(
        2, ge=0, le=10, description="`json_schema`: times the model is re-asked with the "
        "validation error before the request fails.")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Options of the guard itself.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"guard": value}
        if isinstance(value, dict):
            own = set(cls.model_fields)
            extra = {k: v for k, v in value.items() if k not in own}
            if extra:
                kept = {k: v for k, v in value.items() if k in own}
                kept["options"] = {**dict(value.get("options") or {}), **extra}
                return kept
        return value

    @field_validator("guard")
    @classmethod
    def _known(cls, value: str) -> str:
        # A registered guard's name is only known once its plugin is imported: the registry
        # checks names when the gateway builds its guards (ConfigError naming the key).
        if not (_GUARD_NAME.match(value) or FUNCTION_PATTERN.match(value)):
            raise ValueError(
                f"guard {value!r} is neither a guard name (a built-in one: "
                f"{', '.join(GUARD_KINDS)}; or one registered with shipyard.guards.register) "
                "nor a reference like 'package.module:function'")
        return value


class GuardsConfig(Section):
    """Input and output guards of one model alias or service."""

    input: list[GuardSpec] = Field(
        default_factory=list, description="Guards run on each request before the model sees "
        "it, in order.")
    output: list[GuardSpec] = Field(
        default_factory=list, description="Guards run on each answer before the caller sees "
        "it, in order (streams: on a sentence window).")
    timeout_ms: float = Field(
        200.0, gt=0, description="Default longest time one guard may take.")
    on_error: Literal["open", "closed"] = Field(
        "open", description="Default failure policy: `open` allows when a guard fails or "
        "times out, `closed` blocks.")
    blocked_message: str = Field(
        "Sorry, I can't help with that request. If you think this is a mistake, please "
        "rephrase it or contact support.",
        min_length=1, description="The polite answer a caller gets when a guard blocks.")
    escalated_message: str = Field(
        "Thanks for your patience. I've passed this conversation to a person on our team, who "
        "will follow up with you.",
        min_length=1, description="The answer a caller gets when a guard escalates.")
    stream_window: int = Field(
        2, ge=1, le=20, description="Streaming: output guards judge the last N sentences "
        "each time a sentence completes.")

    @model_validator(mode="after")
    def _unique_names(self) -> GuardsConfig:
        for stage, specs in (("input", self.input), ("output", self.output)):
            seen: set[str] = set()
            for i, spec in enumerate(specs):
                name = spec.name or spec.guard
                if name in seen:
                    raise ValueError(
                        f"guards.{stage}[{i}] is a second guard named {name!r}; give one of "
                        "them a distinct 'name'")
                seen.add(name)
        return self
