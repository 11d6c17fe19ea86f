"""Personal data protection on the request path, per model alias or service (`pii:` in config).

One `PIIPolicy` per alias or service; one `PIISession` per request. The session

- cleans the request (message contents, prompts, embedding inputs, or every string of a
  service's input) with typed placeholders that are consistent within the request, or within a
  conversation (`x-shipyard-conversation`), whose table is kept encrypted in the state backend;
- checks the answer for PII the model produced itself and replaces it with `<ENTITY>`;
- restores placeholders in the answer for the caller (`pseudonymize`), also in streams, where a
  placeholder or an entity may be split across chunks;
- gives traces only cleaned payloads, and counts findings (types, never values) on the trace
  and in `shipyard_pii_findings_total`.

The privacy engine is imported only when some alias or service turns PII protection on.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shipyard.config.trust import PIIConfig
from shipyard.errors import ConfigError, InvalidRequest, StateUnavailable
from shipyard.pipeline import RequestContext
from shipyard.state.base import KeyValue

if TYPE_CHECKING:
    from shipyard.privacy import Finding, Operator, PIIEngine
    from shipyard.privacy.pseudonymize import Pseudonyms
    from shipyard.security.crypto import PayloadCipher

__all__ = ["PIIPolicy", "PIISession", "StreamRewriter"]

log = logging.getLogger("shipyard.privacy")
Count = Callable[[str, str, int], None]  # (entity, where, n)


class PIIPolicy:
    """What one alias or service does with personal data; built once at start-up."""

    def __init__(self, config: PIIConfig, where: str, *, kv: KeyValue,
                 cipher: PayloadCipher | None, persistent_kv: bool, count: Count) -> None:
        from shipyard.privacy import PIIEngine, default_recognizers

        self.config = config
        self.where = where
        self.mode = config.mode
        known = {r.entity for r in default_recognizers()} | {"DENY_LIST"}
        for entity in config.entities or ():
            if entity not in known:
                raise ConfigError(
                    f"Config key '{where}.pii.entities' names '{entity}', which no recognizer "
                    f"finds (known: {', '.join(sorted(known))}); fix the name or remove it.")
        self.engine: PIIEngine = PIIEngine(
            entities=config.entities, allow=config.allow, deny=config.deny,
            min_score=config.min_score)
        applied = set(config.apply_to)
        self.clean_request = self.mode in ("redact", "pseudonymize") and "request" in applied
        self.check_response = (self.mode in ("redact", "pseudonymize", "block")
                               and "response" in applied)
        self.clean_traces = "traces" in applied
        self.restore = self.mode == "pseudonymize" and config.restore and self.clean_request
        self.kv = kv
        self.count = count
        self.cipher = cipher
        if config.scope == "conversation" and cipher is None:
            if persistent_kv:
                raise ConfigError(
                    f"Config key '{where}.pii.scope' is 'conversation' with the Redis state "
                    "backend, so placeholder tables leave the process; they are stored "
                    "encrypted: set 'traces.encryption_keys' (make a key with 'shipyard keys "
                    "encryption-key').")
            from shipyard.security.crypto import PayloadCipher, generate_key

            self.cipher = PayloadCipher([generate_key()])  # tables live in this process only

    async def open(self, ctx: RequestContext, conversation: str | None) -> PIISession:
        """A session for one request, with the conversation's table when there is one."""
        from shipyard.privacy.pseudonymize import Pseudonyms

        key = None
        table = Pseudonyms()
        if self.config.scope == "conversation" and conversation is not None:
            digest = hashlib.sha256(conversation.encode()).hexdigest()[:32]
            key = f"pii:{ctx.tenant_id}:{self.where}:{digest}"
            stored = await self.kv.get(key)
            if stored is not None and self.cipher is not None:
                try:
                    table = Pseudonyms.from_bytes(self.cipher.decrypt(stored.decode()).encode())
                except ValueError:
                    table = Pseudonyms()  # unreadable (key rotated away): start afresh
        return PIISession(self, ctx, table, key)


class PIISession:
    """PII handling of one request."""

    def __init__(self, policy: PIIPolicy, ctx: RequestContext, table: Pseudonyms,
                 key: str | None) -> None:
        from shipyard.privacy.pseudonymize import Pseudonymize

        self.policy = policy
        self.ctx = ctx
        self.table = table
        self.key = key
        self.found: Counter[tuple[str, str]] = Counter()
        self._operator: Operator = Pseudonymize(table)

    # -- requests ---------------------------------------------------------------------------

    def clean_text(self, text: str, param: str) -> str:
        """`text` with its PII replaced by placeholders; in `block` mode, refuse it."""
        findings = self.policy.engine.analyze(text)
        if not findings:
            return text
        self._note(findings, "request")
        if self.policy.mode == "block":
            kinds = Counter(f.entity for f in findings)
            listed = ", ".join(f"{k} ({n})" for k, n in sorted(kinds.items()))
            spans = ", ".join(f"{f.start}-{f.end}" for f in findings[:5])
            raise InvalidRequest(
                f"'{param}' contains personal data: {listed}, at characters {spans}. "
                f"'{self.policy.where}' refuses personal data ({self.policy.where}.pii.mode is "
                "'block'); remove it and send the request again.",
                param=param, code="pii_detected")
        return self.policy.engine.anonymize(text, findings, self._operator)

    def clean_chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A copy of a chat, completion or embedding request with its texts cleaned."""
        out = dict(payload)
        messages = payload.get("messages")
        if isinstance(messages, list):
            out["messages"] = [self._clean_message(m, f"messages[{i}]")
                               for i, m in enumerate(messages)]
        for name in ("prompt", "input"):
            value = payload.get(name)
            if isinstance(value, str):
                out[name] = self.clean_text(value, name)
            elif isinstance(value, list) and value and isinstance(value[0], str):
                out[name] = [self.clean_text(v, f"{name}[{i}]") if isinstance(v, str) else v
                             for i, v in enumerate(value)]
        return out

    def _clean_message(self, message: Any, param: str) -> Any:
        if not isinstance(message, dict):
            return message
        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": self.clean_text(content, f"{param}.content")}
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part = {**part, "text": self.clean_text(
                        part["text"], f"{param}.content[{j}].text")}
                parts.append(part)
            return {**message, "content": parts}
        return message

    def clean_json(self, value: Any, param: str = "input") -> Any:
        """Every string in a JSON value (a service's input) cleaned; keys are kept."""
        if isinstance(value, str):
            return self.clean_text(value, param)
        if isinstance(value, list):
            return [self.clean_json(v, f"{param}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.clean_json(v, f"{param}.{k}") for k, v in value.items()}
        return value

    # -- answers ----------------------------------------------------------------------------

    def answer_text(self, text: str) -> tuple[str, str]:
        """(what the trace keeps, what the caller gets) for one answer text."""
        findings = self.policy.engine.analyze(text)
        if findings:
            self._note(findings, "response")
        if self.policy.check_response and findings:
            text = self.policy.engine.anonymize(text, findings, self.leak_operator())
        kept = text if self.policy.check_response else self.for_trace(text)
        return kept, (self.table.restore(text) if self.policy.restore else text)

    def answer_chat(self, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(trace copy, caller copy) of a chat or completion answer."""
        traced = dict(data)
        given = dict(data)
        choices = data.get("choices")
        if isinstance(choices, list):
            traced_choices: list[Any] = []
            given_choices: list[Any] = []
            for choice in choices:
                if not isinstance(choice, dict):
                    traced_choices.append(choice)
                    given_choices.append(choice)
                    continue
                message = choice.get("message")
                if isinstance(message, dict) and isinstance(message.get("content"), str):
                    kept, out = self.answer_text(message["content"])
                    traced_choices.append({**choice, "message": {**message, "content": kept}})
                    given_choices.append({**choice, "message": {**message, "content": out}})
                elif isinstance(choice.get("text"), str):
                    kept, out = self.answer_text(choice["text"])
                    traced_choices.append({**choice, "text": kept})
                    given_choices.append({**choice, "text": out})
                else:
                    traced_choices.append(choice)
                    given_choices.append(choice)
            traced["choices"] = traced_choices
            given["choices"] = given_choices
        return traced, given

    def answer_json(self, value: Any) -> tuple[Any, Any]:
        """(trace copy, caller copy) of a service's output: every string checked."""
        if isinstance(value, str):
            return self.answer_text(value)
        if isinstance(value, list):
            pairs = [self.answer_json(v) for v in value]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        if isinstance(value, dict):
            items = {k: self.answer_json(v) for k, v in value.items()}
            return {k: p[0] for k, p in items.items()}, {k: p[1] for k, p in items.items()}
        return value, value

    def leak_operator(self) -> Operator:
        from shipyard.privacy.pseudonymize import TypeMarker

        return TypeMarker()

    def for_trace(self, text: str) -> str:
        """`text` as a trace may keep it: known values and any PII found become placeholders."""
        text = self.table.hide(text)
        findings = self.policy.engine.analyze(text)
        return self.policy.engine.anonymize(text, findings, self._operator) if findings else text

    def stream(self) -> StreamRewriter:
        return StreamRewriter(self)

    # -- bookkeeping ------------------------------------------------------------------------

    def _note(self, findings: Sequence[Finding], where: str) -> None:
        for f in findings:
            self.found[(f.entity, where)] += 1

    async def close(self) -> None:
        """Record what was found, and save the conversation's table if it grew."""
        if self.found:
            summary: dict[str, dict[str, int]] = {}
            for (entity, where), n in self.found.items():
                summary.setdefault(where, {})[entity] = n
                self.policy.count(entity, where, n)
            attributes = self.ctx.attributes or {}
            attributes["pii"] = {"mode": self.policy.mode, **summary}
            self.ctx.attributes = attributes
        if self.key is not None and self.table.changed and self.policy.cipher is not None:
            sealed = self.policy.cipher.encrypt(self.table.to_bytes().decode())
            try:
                await self.policy.kv.set(self.key, sealed.encode(),
                                         self.policy.config.conversation_ttl_s)
            except StateUnavailable:
                # Redis went away during the request: its answer is complete; only this
                # turn's new pseudonyms are not kept for the next turn.
                log.warning("PII conversation table not saved: Redis is unreachable")


class StreamRewriter:
    """Rewrite streamed chat or completion chunks: leak check, then restore placeholders.

    `event(obj)` takes one parsed SSE data object and returns it rewritten; held-back text is
    released with the choice's finish event, or by `finish()` when the stream ends without one.
    """

    def __init__(self, session: PIISession) -> None:
        self.session = session
        self._choices: dict[int, tuple[Any, Any]] = {}
        self._traced: list[str] = []
        self._base: dict[str, Any] = {}
        self._fields: dict[int, str] = {}

    def _state(self, index: int) -> tuple[Any, Any]:
        state = self._choices.get(index)
        if state is None:
            from shipyard.privacy.pseudonymize import LeakWindow, StreamRestorer

            policy = self.session.policy
            leak = LeakWindow(
                policy.engine, self.session.leak_operator(),
                window=policy.config.stream_window_chars,
                on_findings=lambda found: self.session._note(found, "response"),
            ) if policy.check_response else None
            restorer = StreamRestorer(self.session.table) if policy.restore else None
            state = self._choices[index] = (leak, restorer)
        return state

    def _text(self, index: int, text: str, final: bool) -> str:
        leak, restorer = self._state(index)
        if leak is not None:
            text = leak.feed(text) + (leak.flush() if final else "")
        self._traced.append(text)
        if restorer is not None:
            text = restorer.feed(text) + (restorer.flush() if final else "")
        return text

    def event(self, obj: dict[str, Any]) -> dict[str, Any]:
        if not self._base and "id" in obj:
            self._base = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return obj
        rewritten = []
        for choice in choices:
            if not isinstance(choice, dict):
                rewritten.append(choice)
                continue
            index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
            final = bool(choice.get("finish_reason"))
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._fields[index] = "delta"
                content = delta.get("content")
                if isinstance(content, str) or final:
                    text = self._text(index, content if isinstance(content, str) else "", final)
                    if isinstance(content, str) or text:
                        choice = {**choice, "delta": {**delta, "content": text}}
            elif isinstance(choice.get("text"), str):
                self._fields[index] = "text"
                choice = {**choice, "text": self._text(index, choice["text"], final)}
            if final:
                self._choices.pop(index, None)
            rewritten.append(choice)
        return {**obj, "choices": rewritten}

    def finish(self) -> list[dict[str, Any]]:
        """Events releasing text still held when the stream ended without finish events."""
        out = []
        for index in sorted(self._choices):
            text = self._text(index, "", True)
            if text:
                field = self._fields.get(index, "delta")
                choice: dict[str, Any] = ({"index": index, "delta": {"content": text}}
                                          if field == "delta" else {"index": index,
                                                                    "text": text})
                out.append({**self._base, "choices": [choice]})
        self._choices.clear()
        return out

    def trace_text(self) -> str:
        """The answer as traces may keep it (placeholders, not the caller's values)."""
        text = "".join(self._traced)
        return text if self.session.policy.check_response else self.session.for_trace(text)
