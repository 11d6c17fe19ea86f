"""The OpenAPI 3.1 document of the gateway, built from its route table.

Paths, methods and scopes come from the `ScopedRoute`s the app serves; what each operation takes
and answers is declared once in `_OPERATIONS`. A route without an entry there is left out of the
document, and `tests/unit/test_openapi.py` fails until it is documented.

>>> from shipyard.config import parse_config
>>> from shipyard.gateway.app import create_app
>>> app = create_app(parse_config("auth: {disabled: true}"))  # doctest: +SKIP
>>> openapi_document(app.routes)["paths"]["/v1/embeddings"]["post"]["x-scope"]  # doctest: +SKIP
'inference'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from shipyard._version import __version__
from shipyard.gateway.http import json_response
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute

__all__ = ["openapi_document", "openapi_path", "openapi_route", "route_operations"]

JSON = dict[str, Any]
_CONVERTER = re.compile(r"{(\w+)(?::\w+)?}")


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JSON) -> JSON:
    return {"application/json": {"schema": schema}}


def _nullable(kind: str, **extra: Any) -> JSON:
    return {"type": [kind, "null"], **extra}


_STRING = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_NULL_TIME = {"type": ["string", "null"], "format": "date-time"}
_NAMES = _nullable("array", items={"type": "string"})
_POSITIVE = _nullable("integer", minimum=1)
_LIMIT = _nullable("integer", minimum=1, maximum=2**31 - 1)
_SECONDS = 100 * 365.25 * 86400
_DELIVERY_STATUS = {"enum": ["queued", "running", "succeeded", "dead", "cancelled"]}


def _list_of(name: str) -> JSON:
    return {"type": "object", "required": ["object", "data"],
            "properties": {"object": {"const": "list"},
                           "data": {"type": "array", "items": _ref(name)}}}


def _page_of(name: str) -> JSON:
    return {"type": "object", "required": ["object", "data", "has_more"],
            "properties": {"object": {"const": "list"},
                           "data": {"type": "array", "items": _ref(name)},
                           "first_id": _nullable("string"), "last_id": _nullable("string"),
                           "has_more": {"type": "boolean"}}}


_UNIX = {"type": "integer", "description": "Unix seconds."}
_NULL_UNIX = {"type": ["integer", "null"], "description": "Unix seconds."}

_CONTENT_PART = {"type": "object", "required": ["type"], "properties": {"type": _STRING}}

_KEY_FIELDS: JSON = {
    "id": _STRING, "tenant": _STRING, "name": _STRING,
    "role": {"enum": ["admin", "operator", "developer", "client", "viewer"]},
    "prefix": {"type": "string", "pattern": "^sk-sy-"}, "services": _NAMES, "models": _NAMES,
    "created_at": _TIME, "expires_at": _NULL_TIME, "revoked_at": _NULL_TIME,
    "rotated_from": _nullable("string"), "status": {"enum": ["active", "expired", "revoked"]},
    "rpm": _nullable("integer"), "tpm": _nullable("integer"),
    "max_concurrent": _nullable("integer"), "created_by": _nullable("string"),
}
_SECRET = {"type": "string", "pattern": "^sk-sy-",
           "description": "The key itself, shown only in this answer; store it now."}

# Request and answer bodies. Requests list what Shipyard checks; every other OpenAI parameter
# passes through to the upstream (additional properties are allowed).
_SCHEMAS: dict[str, JSON] = {
    "AnthropicError": {
        "description": "An error in the Anthropic Messages API's shape.",
        "type": "object", "required": ["type", "error"],
        "properties": {"type": {"enum": ["error"]}, "error": {
            "type": "object", "required": ["type", "message"],
            "properties": {"type": _STRING, "message": _STRING}}},
    },
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {"message": _STRING, "type": _STRING,
                           "param": _nullable("string"), "code": _nullable("string")}}},
    },
    "Message": {
        "type": "object", "required": ["role", "content"],
        "description": "A chat message. Assistant messages with `tool_calls`, `function_call` "
                       "or `refusal` may also leave out `content`.",
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
            "content": {"anyOf": [_STRING, {"type": "array", "items": _CONTENT_PART}]}},
    },
    "ChatCompletionRequest": {
        "type": "object", "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "A model alias."},
            "messages": {"type": "array", "minItems": 1, "items": _ref("Message")},
            "stream": _nullable("boolean"),
            "stream_options": {"type": "object", "description": "Only with `stream: true`."},
            "max_tokens": _POSITIVE, "max_completion_tokens": _POSITIVE, "n": _POSITIVE,
            "temperature": _nullable("number", minimum=0, maximum=2),
            "top_p": _nullable("number", minimum=0, maximum=1)},
        "dependentSchemas": {"stream_options": {"required": ["stream"],
                                                "properties": {"stream": {"const": True}}}},
    },
    "CompletionRequest": {
        "type": "object", "required": ["model", "prompt"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "prompt": {"anyOf": [_STRING, {"type": "array", "minItems": 1, "items": {
                "anyOf": [_STRING, {"type": "integer"}, {"type": "array"}]}}]},
            "stream": _nullable("boolean"),
            "stream_options": {"type": "object", "description": "Only with `stream: true`."},
            "max_tokens": _POSITIVE, "n": _POSITIVE,
            "temperature": _nullable("number", minimum=0, maximum=2),
            "top_p": _nullable("number", minimum=0, maximum=1)},
        "dependentSchemas": {"stream_options": {"required": ["stream"],
                                                "properties": {"stream": {"const": True}}}},
    },
    "EmbeddingRequest": {
        "type": "object", "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "input": {"anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "items": {"anyOf": [
                    {"type": "string", "minLength": 1}, {"type": "integer"},
                    {"type": "array", "minItems": 1, "items": {"type": "integer"}}]}}]},
            "encoding_format": {"enum": ["float", "base64", None]},
            "dimensions": _POSITIVE},
    },
    "ResponseRequest": {
        "type": "object", "required": ["model"],
        "description": "An OpenAI Responses API request, served over the alias's chat chain. "
                       "Function tools only; hosted tools are refused with a 400.",
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "input": {"anyOf": [{"type": "string"}, {"type": "array",
                                                     "items": {"type": "object"}}]},
            "instructions": _nullable("string"),
            "previous_response_id": _nullable("string"),
            "stream": {"type": "boolean"}, "store": {"type": "boolean"},
            "tools": {"type": "array", "items": {"type": "object"}},
            "text": {"type": "object"}, "max_output_tokens": _POSITIVE},
    },
    "Response": {
        "type": "object", "required": ["id", "object", "status", "output"],
        "properties": {"id": _STRING, "object": {"type": "string", "enum": ["response"]},
                       "status": _STRING, "model": _STRING,
                       "output": {"type": "array", "items": {"type": "object"}},
                       "usage": {"type": "object"}},
    },
    "ResponseDeleted": {
        "type": "object", "required": ["id", "object", "deleted"],
        "properties": {"id": _STRING, "object": _STRING, "deleted": {"type": "boolean"}},
    },
    "ResponseInputTokens": {
        "type": "object", "required": ["object", "input_tokens"],
        "properties": {"object": _STRING, "input_tokens": {"type": "integer"}},
    },
    "AnthropicMessageRequest": {
        "type": "object", "required": ["model", "messages"],
        "description": "An Anthropic Messages API request (`max_tokens` is required to "
                       "create a message), served over the alias's chat chain. Your own "
                       "tools only; `thinking` and `top_k` are refused with a 400.",
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "max_tokens": _POSITIVE,
            "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "system": {"anyOf": [{"type": "string"}, {"type": "array",
                                                      "items": {"type": "object"}}]},
            "stream": {"type": "boolean"}, "temperature": {"type": "number"},
            "top_p": {"type": "number"},
            "stop_sequences": {"type": "array", "items": _STRING},
            "tools": {"type": "array", "items": {"type": "object"}},
            "tool_choice": {"type": "object"}, "metadata": {"type": "object"}},
    },
    "AnthropicMessage": {
        "type": "object", "required": ["id", "type", "role", "content"],
        "description": "A Messages API answer; with `stream: true`, Anthropic's named events "
                       "(message_start … message_stop). Errors on these routes have "
                       "Anthropic's shape: {\"type\": \"error\", \"error\": {\"type\", "
                       "\"message\"}}.",
        "properties": {"id": _STRING, "type": {"const": "message"}, "role": _STRING,
                       "model": _STRING,
                       "content": {"type": "array", "items": {"type": "object"}},
                       "stop_reason": _nullable("string"), "usage": {"type": "object"}},
    },
    "AnthropicTokenCount": {
        "type": "object", "required": ["input_tokens"],
        "properties": {"input_tokens": {"type": "integer"}},
    },
    "Usage": {
        "type": "object", "required": ["prompt_tokens", "total_tokens"],
        "properties": {"prompt_tokens": {"type": "integer"},
                       "completion_tokens": {"type": "integer"},
                       "total_tokens": {"type": "integer"},
                       "estimated": {"type": "boolean",
                                     "description": "Present when Shipyard estimated it."}},
    },
    "ChatCompletion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {"id": _STRING, "object": {"const": "chat.completion"},
                       "created": {"type": "integer"}, "model": _STRING,
                       "choices": {"type": "array", "items": {"type": "object"}},
                       "usage": _ref("Usage")},
    },
    "TextCompletion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {"id": _STRING, "object": {"const": "text_completion"},
                       "created": {"type": "integer"}, "model": _STRING,
                       "choices": {"type": "array", "items": {"type": "object"}},
                       "usage": _ref("Usage")},
    },
    "Embedding": {
        "type": "object", "required": ["object", "index", "embedding"],
        "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                       "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                               _STRING]}},
    },
    "EmbeddingList": {
        "type": "object", "required": ["object", "data", "model", "usage"],
        "properties": {"object": {"const": "list"},
                       "data": {"type": "array", "items": _ref("Embedding")},
                       "model": _STRING, "usage": _ref("Usage")},
    },
    "Model": {
        "type": "object", "required": ["id", "object", "created", "owned_by"],
        "additionalProperties": False,
        "properties": {"id": _STRING, "object": {"const": "model"},
                       "created": {"type": "integer"}, "owned_by": _STRING},
    },
    "ModelList": _list_of("Model"),
    "Service": {
        "type": "object", "required": ["id", "object", "description", "input_schema",
                                       "invoke_url"],
        "additionalProperties": False,
        "properties": {"id": _STRING, "object": {"const": "service"}, "description": _STRING,
                       "input_schema": _nullable("object"), "invoke_url": _STRING},
    },
    "ServiceList": _list_of("Service"),
    "ServiceInput": {"type": "object", "description": "The service's input; validated against "
                     "its `input_schema` (see GET /v1/services)."},
    "ServiceResult": {
        "type": "object", "required": ["id", "object", "service", "output"],
        "additionalProperties": False,
        "properties": {"id": _STRING, "object": {"const": "service.result"},
                       "service": _STRING, "output": {}},
    },
    "Tenant": {
        "type": "object", "required": ["id", "name", "created_at", "disabled"],
        "additionalProperties": False,
        "properties": {"id": _STRING, "name": _STRING, "created_at": _TIME,
                       "disabled": {"type": "boolean"}},
    },
    "TenantList": _list_of("Tenant"),
    "TenantCreate": {
        "type": "object", "required": ["id"],
        "properties": {"id": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
                       "name": _nullable("string", maxLength=256)},
    },
    "Key": {
        "type": "object", "required": list(_KEY_FIELDS), "additionalProperties": False,
        "description": "An API key as the admin API shows it: never its secret or digest.",
        "properties": _KEY_FIELDS,
    },
    "KeyList": _list_of("Key"),
    "KeyCreate": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": r"\S", "maxLength": 256},
                       "role": {"enum": ["admin", "operator", "developer", "client", "viewer"]},
                       "services": _nullable("array", items={"type": "string", "minLength": 1}),
                       "models": _nullable("array", items={"type": "string", "minLength": 1}),
                       "expires_in_s": _nullable("number", exclusiveMinimum=0,
                                                 maximum=_SECONDS),
                       "rpm": _LIMIT, "tpm": _LIMIT, "max_concurrent": _LIMIT},
    },
    "KeyCreated": {
        "type": "object", "required": [*_KEY_FIELDS, "secret", "note"],
        "additionalProperties": False,
        "properties": {**_KEY_FIELDS, "secret": _SECRET, "note": _STRING},
    },
    "KeyRotate": {
        "type": "object",
        "properties": {"overlap_s": _nullable(
            "number", minimum=0, maximum=_SECONDS,
            description="How long the old key keeps working (3600).")},
    },
    "KeyRotated": {
        "type": "object", "required": [*_KEY_FIELDS, "secret", "note", "replaces"],
        "additionalProperties": False,
        "properties": {**_KEY_FIELDS, "secret": _SECRET, "note": _STRING,
                       "replaces": _ref("Key")},
    },
    "Trace": {
        "type": "object", "required": ["id", "request_id", "tenant_id", "route", "status"],
        "properties": {"id": _STRING, "request_id": _STRING, "tenant_id": _STRING,
                       "route": _STRING, "status": {"type": "integer"},
                       "started_at": _TIME, "ended_at": _TIME,
                       "request_body": _nullable("string"),
                       "response_body": _nullable("string"),
                       "outcome": _nullable("string"), "trace_id": _nullable("string")},
    },
    "TraceList": _list_of("Trace"),
    "TraceTree": {
        "type": "object", "required": ["object", "trace_id", "records", "spans"],
        "description": "A request and every request of its W3C trace, with their spans.",
        "properties": {"object": {"type": "string", "enum": ["trace.tree"]},
                       "trace_id": _STRING,
                       "records": {"type": "array",
                                   "items": {"$ref": "#/components/schemas/Trace"}},
                       "spans": {"type": "array", "items": {"type": "object"}}},
    },
    "FeedbackCreate": {
        "type": "object", "required": ["trace_id"], "additionalProperties": False,
        "description": "Feedback on one of the caller's traces: a `score`, a `label`, or both.",
        "properties": {
            "trace_id": {"type": "string", "maxLength": 128,
                         "description": "The `x-shipyard-trace-id` (or `x-request-id`) of the "
                                        "request."},
            "score": {"type": "number", "minimum": -1e9, "maximum": 1e9,
                      "description": "E.g. 1 / 0 for thumbs up / down, or 1-5 stars."},
            "label": {"type": "string", "maxLength": 64},
            "comment": {"type": "string", "maxLength": 4000},
            "by": {"type": "string", "maxLength": 128,
                   "description": "Who gave the feedback (an end-user id, a reviewer)."}},
    },
    "Feedback": {
        "type": "object",
        "required": ["id", "object", "trace_id", "tenant", "created_at", "service", "version",
                     "score", "label", "comment", "by", "key_id"],
        "properties": {"id": _STRING, "object": {"const": "feedback"}, "trace_id": _STRING,
                       "tenant": _STRING, "created_at": _TIME, "service": _STRING,
                       "version": _STRING, "score": _nullable("number"),
                       "label": _nullable("string"), "comment": _nullable("string"),
                       "by": _nullable("string"), "key_id": _nullable("string")},
    },
    "FeedbackList": _list_of("Feedback"),
    "FeedbackBucket": {
        "type": "object",
        "required": ["start", "service", "version", "count", "scored", "mean_score", "labels"],
        "properties": {"start": _TIME, "service": _STRING, "version": _STRING,
                       "count": {"type": "integer"}, "scored": {"type": "integer"},
                       "mean_score": _nullable("number"),
                       "labels": {"type": "object",
                                  "additionalProperties": {"type": "integer"}}},
    },
    "FeedbackSummary": _list_of("FeedbackBucket"),
    "AuditEntry": {
        "type": "object", "additionalProperties": False,
        "required": ["seq", "tenant_id", "at", "actor", "action", "target", "outcome",
                     "details", "prev_hash", "hash"],
        "properties": {"seq": {"type": "integer"}, "tenant_id": _STRING, "at": _STRING,
                       "actor": _STRING, "action": _STRING, "target": _STRING,
                       "outcome": _STRING, "details": _nullable("object"),
                       "prev_hash": _STRING, "hash": _STRING},
    },
    "AuditList": _list_of("AuditEntry"),
    "Alert": {
        "type": "object",
        "required": ["id", "key", "source", "severity", "state", "url", "started_at",
                     "events"],
        "properties": {
            "id": _STRING, "key": _STRING, "tenant_id": _STRING,
            "source": {"enum": ["rule", "slo"]},
            "severity": {"enum": ["page", "ticket", "info"]},
            "state": {"enum": ["pending", "firing", "resolved"]},
            "value": _nullable("number"), "threshold": _nullable("number"),
            "summary": _STRING, "runbook": _STRING, "labels": {"type": "object"},
            "url": _STRING, "started_at": _TIME, "fired_at": _NULL_TIME,
            "clear_since": _NULL_TIME, "resolved_at": _NULL_TIME, "updated_at": _TIME,
            "events": {"type": "array", "items": {
                "type": "object", "required": ["at", "event"],
                "properties": {"at": _TIME, "event": _STRING, "value": _nullable("number"),
                               "details": _nullable("object")}}}},
    },
    "AlertList": {
        "type": "object", "required": ["object", "data", "slos"],
        "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Alert")},
            "slos": {"type": "array", "items": {
                "type": "object",
                "required": ["name", "sli", "objective", "requests", "bad", "budget_remaining"],
                "properties": {"name": _STRING, "sli": {"enum": ["availability", "latency"]},
                               "objective": {"type": "number"}, "period_s": {"type": "number"},
                               "requests": {"type": "integer"}, "bad": {"type": "integer"},
                               "sli_value": _nullable("number"),
                               "budget_remaining": {"type": "number"}}}}},
    },
    "Status": {
        "type": "object", "required": ["draining", "budgets", "models", "traces"],
        "properties": {"draining": {"type": "boolean"},
                       "budgets": {"type": "array", "items": {"type": "object"}},
                       "models": {"type": "object"}, "traces": _nullable("object")},
    },
    "StreamEvent": {
        "type": "object", "required": ["data"],
        "description": "One server-sent event: a JSON chunk (`chat.completion.chunk` or "
                       "`text_completion`), a JSON error object when the stream fails, or "
                       "`[DONE]` after a complete answer.",
        "properties": {"data": {"anyOf": [{"const": "[DONE]"},
                                          {"type": "string", "pattern": "^\\s*\\{",
                                           "contentMediaType": "application/json"}]},
                       "event": _STRING, "id": _STRING, "retry": {"type": "integer"}},
    },
    "Escalation": {
        "type": "object",
        "required": ["id", "object", "tenant_id", "service", "trigger", "reason", "status",
                     "overdue", "created_at", "due_at"],
        "properties": {
            "id": _STRING, "object": {"const": "escalation"}, "tenant_id": _STRING,
            "key_id": _nullable("string"), "conversation_id": _nullable("string"),
            "request_id": _STRING, "trace_id": _nullable("string"),
            "kind": {"enum": ["model", "service"]}, "service": _STRING,
            "trigger": {"enum": ["user_request", "low_confidence", "repeated_failures",
                                 "guard"]},
            "reason": _STRING, "score": _nullable("number"),
            "status": {"enum": ["open", "claimed", "answered", "resolved"]},
            "overdue": {"type": "boolean", "description": "Waiting for an answer past due_at."},
            "pii_cleaned": {"type": "boolean"}, "created_at": _TIME, "due_at": _TIME,
            "due_in_s": {"type": ["number", "null"], "description": "SLA timer: seconds left "
                         "to answer, negative when overdue; null once answered."},
            "claimed_by": _nullable("string"), "claimed_at": _NULL_TIME,
            "answer": _nullable("string"), "answered_by": _nullable("string"),
            "answered_at": _NULL_TIME, "resolved_by": _nullable("string"),
            "resolved_at": _NULL_TIME, "resolution": _nullable("string"),
            "delivered_at": _NULL_TIME, "overdue_notified_at": _NULL_TIME,
            "conversation": {"type": "array", "description": "The conversation (PII-cleaned "
                             "when the policy says so); only on single tickets."}},
    },
    "EscalationList": _list_of("Escalation"),
    "WebhookDelivery": {
        "type": "object",
        "required": ["id", "object", "tenant", "endpoint", "event_type", "status", "attempts",
                     "max_attempts", "created_at"],
        "properties": {
            "id": _STRING, "object": {"const": "webhook.delivery"}, "tenant": _STRING,
            "endpoint": _STRING, "event_type": _STRING, "status": _DELIVERY_STATUS,
            "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
            "created_at": _TIME, "updated_at": _TIME, "next_attempt_at": _NULL_TIME,
            "finished_at": _NULL_TIME, "last_error": _nullable("string"),
            "last_status_code": _nullable("integer"), "last_latency_ms": _nullable("number"),
            "body": {"type": "string", "description": "The exact body sent (detail only)."},
            "attempt_log": {"type": "array", "items": {"type": "object"}}}},
    "WebhookDeliveryList": _list_of("WebhookDelivery"),
    "Job": {
        "type": "object", "required": ["id", "object", "status", "endpoint", "target",
                                       "created_at", "attempts", "max_attempts"],
        "properties": {
            "id": _STRING, "object": {"const": "job"},
            "status": {"enum": ["queued", "running", "succeeded", "dead", "cancelled"]},
            "endpoint": _STRING, "target": _STRING,
            "target_type": {"enum": ["model", "service"]},
            "created_at": _UNIX, "started_at": _NULL_UNIX, "finished_at": _NULL_UNIX,
            "next_attempt_at": _NULL_UNIX, "attempts": {"type": "integer"},
            "max_attempts": {"type": "integer"}, "timeout_s": _nullable("number"),
            "cancel_requested": {"type": "boolean"}, "metadata": {"type": "object"},
            "result": {"description": "The answer a synchronous call would have given."},
            "status_code": _nullable("integer"), "trace_id": _nullable("string"),
            "error": {"type": ["object", "null"], "description": "The last error (dead, "
                      "cancelled, or retrying)."}}},
    "JobList": _page_of("Job"),
    "JobCreate": {
        "type": "object", "required": ["endpoint", "body"],
        "properties": {
            "endpoint": {"type": "string", "description": "`/v1/chat/completions`, "
                         "`/v1/completions`, `/v1/embeddings` or `/v1/services/NAME/invoke`."},
            "body": {"description": "The request (or the service's input)."},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
            "max_attempts": {"type": "integer", "minimum": 1},
            "metadata": {"type": "object", "additionalProperties": _STRING}}},
    "JobInput": {"description": "What the synchronous route takes: a service's input, or a "
                 "chat, completion or embedding request (`model` may be left out)."},
    "File": {
        "type": "object", "required": ["id", "object", "bytes", "created_at", "filename",
                                       "purpose"],
        "properties": {"id": _STRING, "object": {"const": "file"}, "bytes": {"type": "integer"},
                       "created_at": _UNIX, "filename": _STRING, "purpose": _STRING,
                       "status": _STRING, "expires_at": _NULL_UNIX}},
    "FileList": _page_of("File"),
    "FileUpload": {
        "type": "object", "required": ["file", "purpose"],
        "properties": {"file": {"type": "string", "contentMediaType":
                                "application/octet-stream"},
                       "purpose": {"enum": ["batch", "user_data"]}}},
    "FileDeleted": {"type": "object", "required": ["id", "object", "deleted"],
                    "properties": {"id": _STRING, "object": {"const": "file"},
                                   "deleted": {"type": "boolean"}}},
    "Batch": {
        "type": "object", "required": ["id", "object", "endpoint", "input_file_id",
                                       "completion_window", "status", "created_at"],
        "properties": {
            "id": _STRING, "object": {"const": "batch"}, "endpoint": _STRING,
            "input_file_id": _STRING, "completion_window": _STRING,
            "status": {"enum": ["validating", "failed", "in_progress", "finalizing",
                                "completed", "expired", "cancelling", "cancelled"]},
            "output_file_id": _nullable("string"), "error_file_id": _nullable("string"),
            "errors": {"type": ["object", "null"]},
            "request_counts": {"type": "object", "properties": {
                "total": {"type": "integer"}, "completed": {"type": "integer"},
                "failed": {"type": "integer"}}},
            "metadata": {"type": ["object", "null"]}, "created_at": _UNIX,
            "expires_at": _NULL_UNIX, "in_progress_at": _NULL_UNIX,
            "finalizing_at": _NULL_UNIX, "completed_at": _NULL_UNIX,
            "failed_at": _NULL_UNIX, "expired_at": _NULL_UNIX, "cancelling_at": _NULL_UNIX,
            "cancelled_at": _NULL_UNIX}},
    "BatchList": _page_of("Batch"),
    "BatchCreate": {
        "type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
        "properties": {
            "input_file_id": _STRING,
            "endpoint": {"type": "string", "description": "`/v1/chat/completions`, "
                         "`/v1/completions`, `/v1/embeddings` or `/v1/services/NAME/invoke`."},
            "completion_window": {"type": "string", "description": "One of "
                                  "`batches.completion_windows` (default `24h`)."},
            "metadata": {"type": "object", "additionalProperties": _STRING}}},
    "WebhookEndpoint": {
        "type": "object", "required": ["name", "object", "host", "events", "signed"],
        "properties": {"name": _STRING, "object": {"const": "webhook.endpoint"},
                       "host": _STRING, "events": {"type": "array", "items": _STRING},
                       "signed": {"type": "boolean"}, "max_attempts": {"type": "integer"},
                       "timeout_s": {"type": "number"}}},
    "WebhookEndpointList": _list_of("WebhookEndpoint"),
    "EscalationClaim": {"type": "object", "properties": {"force": {
        "type": "boolean", "description": "Take over a ticket another reviewer claimed."}}},
    "EscalationAnswer": {
        "type": "object", "required": ["answer"],
        "properties": {"answer": {"type": "string", "minLength": 1, "maxLength": 20000},
                       "label": {"type": "string", "maxLength": 64,
                                 "description": "Feedback label (default reviewer_answer)."}}},
    "EscalationResolve": {"type": "object", "properties": {"resolution": _STRING}},
    "EscalationStatus": {
        "type": "object", "required": ["id", "object", "status"],
        "properties": {"id": _STRING, "object": {"const": "escalation"},
                       "status": {"enum": ["open", "claimed", "answered", "resolved"]},
                       "conversation_id": _nullable("string"), "created_at": _TIME,
                       "answer": _nullable("string"), "answered_at": _NULL_TIME}},
    "EscalationStatusList": _list_of("EscalationStatus"),
    "Live": {"type": "object", "required": ["status"],
             "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object", "required": ["status", "checks"],
        "properties": {"status": {"enum": ["ready", "degraded", "not ready"]},
                       "checks": {"type": "object",
                                  "additionalProperties": {"type": "boolean"}},
                       "state": {"type": "object", "required": ["backend", "reachable"],
                                 "properties": {"backend": {"enum": ["memory", "redis"]},
                                                "reachable": {"type": "boolean"}}}},
    },
    "OpenAPI": {"type": "object", "required": ["openapi", "info", "paths"]},
    "Version": {
        "type": "object", "required": ["target", "version", "kind"],
        "properties": {"target": _STRING, "version": {"type": "integer"},
                       "kind": {"enum": ["function", "model", "config"]},
                       "spec_hash": _STRING,
                       "function": _nullable("string"), "artifact": {"type": ["object", "null"]},
                       "call": _nullable("string"), "config": {"type": "object"},
                       "meta": {"type": "object"}, "created_at": _TIME,
                       "created_by": _STRING, "new": {"type": "boolean"}}},
    "VersionList": {
        "type": "object", "required": ["object", "service", "aliases", "data"],
        "properties": {"object": {"const": "list"}, "service": _STRING,
                       "aliases": {"type": "object",
                                   "additionalProperties": {"type": "integer"}},
                       "serving": {"type": ["object", "null"]},
                       "rollouts": {"type": "array", "items": {"$ref": "#/components/schemas/"
                                                                       "Rollout"}},
                       "data": {"type": "array",
                                "items": {"$ref": "#/components/schemas/Version"}}}},
    "ModelVersionList": {
        "type": "object", "required": ["object", "model", "target", "aliases", "data"],
        "properties": {"object": {"const": "list"}, "model": _STRING, "target": _STRING,
                       "aliases": {"type": "object",
                                   "additionalProperties": {"type": "integer"}},
                       "serving": _nullable("string"),
                       "status": {"type": ["object", "null"]},
                       "rollouts": {"type": "array", "items": {"$ref": "#/components/schemas/"
                                                                       "Rollout"}},
                       "data": {"type": "array",
                                "items": {"$ref": "#/components/schemas/Version"}}}},
    "VersionRegister": {
        "type": "object", "description": "Exactly one of `function` or `model`.",
        "properties": {"function": _STRING, "model": {
            "type": "string", "description": "A model file beside the config or in the "
            "artifact store."}, "call": {"enum": ["predict", "predict_proba"]},
            "meta": {"type": "object"}}},
    "Promote": {"type": "object", "required": ["version"],
                "properties": {"version": {"type": "integer", "minimum": 1},
                               "reason": _STRING}},
    "Promoted": {"type": "object", "properties": {"service": _STRING, "model": _STRING,
                                                  "stable": {"type": "integer"},
                                                  "previous": {"type": ["integer", "null"]}}},
    "Rollback": {"type": "object", "properties": {"to": {"type": "integer", "minimum": 1},
                                                  "reason": _STRING}},
    "RolledBack": {"type": "object", "properties": {
        "service": _STRING, "model": _STRING, "rolled_back": {"enum": ["rollout", "stable"]},
        "stable": {"type": ["integer", "null"]}}},
    "RolloutStart": {"type": "object", "required": ["version"],
                     "properties": {"version": {"type": "integer", "minimum": 1},
                                    "mode": {"enum": ["canary", "shadow"]},
                                    "share": {"type": "number"}}},
    "Rollout": {"type": "object", "required": ["id", "target", "candidate", "stable", "mode",
                                               "state"],
                "properties": {"id": _STRING, "target": _STRING,
                               "candidate": {"type": "integer"}, "stable": {"type": "integer"},
                               "mode": {"enum": ["canary", "shadow"]},
                               "state": {"enum": ["running", "promoted", "rolled_back",
                                                  "stopped"]},
                               "step": {"type": "integer"}, "share": {"type": "number"},
                               "reason": _nullable("string"),
                               "last_check": {"type": ["object", "null"]}}},
    "EvalList": {"type": "object", "required": ["object", "data"],
                 "properties": {"object": {"const": "list"},
                                "data": {"type": "array", "items": {"type": "object"}}}},
    "Reloaded": {"type": "object", "required": ["reloaded"],
                 "properties": {"reloaded": {"type": "boolean"},
                                "models": {"type": "array", "items": _STRING},
                                "services": {"type": "object"},
                                "restart_needed": {"type": "array", "items": _STRING}}},
}

_ERRORS: dict[int, str] = {
    400: "Invalid request: bad JSON, a missing or invalid parameter (`param` names it).",
    401: "No key, a malformed `Authorization` header, or an unknown, expired or revoked key.",
    403: "The key's role lacks the operation's scope, or it may not use this model, service "
         "or tenant.",
    404: "The model, service, key, trace, escalation or tenant does not exist (or is another "
         "tenant's).",
    409: "The escalation's, job's or batch's status does not allow the action, a version "
         "change conflicts (a rollout already running, a reload that failed to load), or an "
         "`Idempotency-Key` was reused with another body or is still running: the message "
         "names it.",
    413: "The body is larger than `server.max_body_bytes`.",
    422: "The input does not match the service's schema, the upstream refused it, or a "
         "field of an admin request is invalid (`param` names it).",
    429: "A rate limit or budget is spent; `Retry-After` says when to retry.",
    500: "Shipyard hit an internal error, or a hosted service raised.",
    502: "The upstream failed (5xx, reset, malformed answer).",
    503: "Shipyard is at capacity or shutting down, or every deployment's circuit is open.",
    504: "The upstream (or the hosted service) did not answer in time.",
}
_AUTH = (401, 403, 500)
_INFERENCE = (400, *_AUTH, 404, 409, 413, 422, 429, 502, 503, 504)

_PRIORITY = {"name": "x-shipyard-priority", "in": "header", "required": False,
             "description": "`batch` requests wait behind interactive ones.",
             "schema": {"enum": ["interactive", "batch"]}}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Repeat the request with the same key (within "
                "`work.idempotency_ttl_s`) to get the first answer back (`idempotent-replayed: "
                "true`) instead of running it again; another body under the same key is a 409.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
_TENANT = {"name": "tenant", "in": "query", "required": False,
           "description": "Act on another tenant (admins of the platform tenant only).",
           "schema": _STRING}


def _path_param(name: str, description: str) -> JSON:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": _STRING}


def _query(name: str, schema: JSON, description: str) -> JSON:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


_SERVICE = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "A service name."}
_ALIAS = {"name": "alias", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "A model alias (a name under `models:`)."}
_ESCALATION_ID = {"name": "escalation_id", "in": "path", "required": True,
                  "description": "A ticket id (`esc_…`).", "schema": _STRING}
_JOB_ID = _path_param("job_id", "A job id (`job_…`).")
_FILE_ID = _path_param("file_id", "A file id (`file-…`).")
_BATCH_ID = _path_param("batch_id", "A batch id (`batch_…`).")
_JOB_OPTIONS = (
    _query("timeout_s", {"type": "number", "exclusiveMinimum": 0},
           "Longest one attempt may take (at most `jobs.timeout_s`)."),
    _query("max_attempts", {"type": "integer", "minimum": 1},
           "Attempts before the job is dead-lettered (at most `jobs.max_attempts`)."))
_DELIVERY_ID = {"name": "delivery_id", "in": "path", "required": True,
                "description": "A delivery id (`msg_…`, the `webhook-id` header).",
                "schema": _STRING}


@dataclass(frozen=True)
class _Op:
    """What one operation takes and answers (its path, method and scope come from the route)."""

    id: str
    summary: str
    tag: str
    ok: JSON  # status -> response object
    errors: tuple[int, ...] = _AUTH
    body: str | None = None
    body_required: bool = True
    params: tuple[JSON, ...] = ()
    extra: JSON = field(default_factory=dict)
    error_schema: str = "Error"  # the error body's shape ("AnthropicError" on /v1/messages)


def _error_response(status: int, schema: str) -> JSON:
    if schema == "Error":
        return {"$ref": f"#/components/responses/E{status}"}
    return {"description": _ERRORS[status], "content": _json(_ref(schema))}


def _ok(schema: str, status: int = 200, description: str = "OK.") -> JSON:
    return {str(status): {"description": description, "content": _json(_ref(schema))}}


def _streaming(schema: str) -> JSON:
    return {"200": {"description": "The answer; with `stream: true`, server-sent events ending "
                                   "in `data: [DONE]` (or an error event and no `[DONE]`).",
                    "content": {**_json(_ref(schema)),
                                "text/event-stream": {"schema": _ref("StreamEvent")}}}}


_OPERATIONS: dict[tuple[str, str], _Op] = {
    ("POST", "/v1/chat/completions"): _Op(
        "createChatCompletion", "Chat completion (OpenAI-compatible)", "inference",
        _streaming("ChatCompletion"), _INFERENCE, "ChatCompletionRequest",
        params=(_PRIORITY, _IDEMPOTENCY)),
    ("POST", "/v1/completions"): _Op(
        "createCompletion", "Legacy text completion", "inference",
        _streaming("TextCompletion"), _INFERENCE, "CompletionRequest",
        params=(_PRIORITY, _IDEMPOTENCY)),
    ("POST", "/v1/embeddings"): _Op(
        "createEmbedding", "Embeddings", "inference", _ok("EmbeddingList"), _INFERENCE,
        "EmbeddingRequest", params=(_PRIORITY, _IDEMPOTENCY)),
    ("POST", "/v1/responses"): _Op(
        "createResponse", "Responses API (OpenAI-compatible) over a chat model alias",
        "inference", _streaming("Response"), _INFERENCE, "ResponseRequest",
        params=(_PRIORITY, _IDEMPOTENCY)),
    ("POST", "/v1/responses/input_tokens"): _Op(
        "countResponseInputTokens", "The input's size in tokens (estimated)", "inference",
        _ok("ResponseInputTokens"), (400, *_AUTH, 404, 413), "ResponseRequest"),
    ("GET", "/v1/responses/{response_id}"): _Op(
        "getResponse", "A stored response of this tenant", "inference", _ok("Response"),
        (*_AUTH, 404), params=(_path_param("response_id", "A response id (resp_...)."),)),
    ("DELETE", "/v1/responses/{response_id}"): _Op(
        "deleteResponse", "Delete a stored response", "inference", _ok("ResponseDeleted"),
        (*_AUTH, 404), params=(_path_param("response_id", "A response id (resp_...)."),)),
    ("POST", "/v1/messages"): _Op(
        "createMessage", "Anthropic Messages API over any chat model alias (errors in "
        "Anthropic's shape)", "inference", _streaming("AnthropicMessage"), _INFERENCE,
        "AnthropicMessageRequest", params=(_PRIORITY,), error_schema="AnthropicError"),
    ("POST", "/v1/messages/count_tokens"): _Op(
        "countMessageTokens", "A Messages request's input size in tokens (estimated)",
        "inference", _ok("AnthropicTokenCount"), (400, *_AUTH, 404, 413),
        "AnthropicMessageRequest", error_schema="AnthropicError"),
    ("GET", "/v1/models"): _Op("listModels", "The model aliases this key may use", "models",
                               _ok("ModelList")),
    ("GET", "/v1/models/{model}"): _Op(
        "getModel", "One model alias", "models", _ok("Model"), (*_AUTH, 404),
        params=(_path_param("model", "A model alias."),)),
    ("GET", "/v1/services"): _Op("listServices", "The hosted services this key may use",
                                 "services", _ok("ServiceList")),
    ("POST", "/v1/services/{name}/invoke"): _Op(
        "invokeService", "Invoke a hosted Python service", "services", _ok("ServiceResult"),
        (400, *_AUTH, 404, 409, 413, 422, 429, 503, 504), "ServiceInput",
        params=(_path_param("name", "A service name."), _PRIORITY, _IDEMPOTENCY)),
    ("POST", "/v1/services/{name}/jobs"): _Op(
        "createServiceJob", "Invoke a hosted service asynchronously (a durable job)", "jobs",
        _ok("Job", 202, "Queued."), (400, *_AUTH, 404, 409, 413, 422, 503), "JobInput",
        params=(_path_param("name", "A service name."), _IDEMPOTENCY, *_JOB_OPTIONS)),
    ("POST", "/v1/models/{model}/jobs"): _Op(
        "createModelJob", "Call a model alias asynchronously (a durable job)", "jobs",
        _ok("Job", 202, "Queued."), (400, *_AUTH, 404, 409, 413, 503), "JobInput",
        params=(_path_param("model", "A model alias."), _IDEMPOTENCY, *_JOB_OPTIONS)),
    ("POST", "/v1/jobs"): _Op(
        "createJob", "Create a durable job for any endpoint", "jobs",
        _ok("Job", 202, "Queued."), (400, *_AUTH, 404, 409, 413, 422, 503), "JobCreate",
        params=(_IDEMPOTENCY,)),
    ("GET", "/v1/jobs"): _Op(
        "listJobs", "This tenant's jobs, newest first", "jobs", _ok("JobList"), (400, *_AUTH, 404),
        params=(_query("status", {"enum": ["queued", "running", "succeeded", "dead",
                                            "cancelled"]}, "Only this status."),
                _query("target", _STRING, "Only this model alias or service."),
                _query("limit", {"type": "integer"}, "How many (1-100, default 20)."),
                _query("after", _STRING, "The last id of the previous page."), _TENANT)),
    ("GET", "/v1/jobs/{job_id}"): _Op(
        "getJob", "Poll a job (its result, or its last error)", "jobs", _ok("Job"),
        (400, *_AUTH, 404),
        params=(_JOB_ID, _query("wait", {"type": "number", "minimum": 0, "maximum": 60},
                                "Wait up to this many seconds for the job to finish."),
                _TENANT)),
    ("POST", "/v1/jobs/{job_id}/cancel"): _Op(
        "cancelJob", "Cancel a queued or running job", "jobs", _ok("Job"),
        (400, *_AUTH, 404, 409), params=(_JOB_ID, _TENANT)),
    ("POST", "/v1/jobs/{job_id}/retry"): _Op(
        "retryJob", "Run a dead, cancelled or succeeded job again", "jobs",
        _ok("Job", 202, "Queued."), (400, *_AUTH, 404, 409), params=(_JOB_ID, _TENANT)),
    ("POST", "/v1/files"): _Op(
        "uploadFile", "Upload a file (multipart: `file`, `purpose`)", "files", _ok("File"),
        (400, *_AUTH, 413), extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": _ref("FileUpload")}}}}),
    ("GET", "/v1/files"): _Op(
        "listFiles", "This tenant's files", "files", _ok("FileList"), (400, *_AUTH, 404),
        params=(_query("purpose", _STRING, "Only this purpose."),
                _query("limit", {"type": "integer"}, "How many (1-10000, default 100)."),
                _query("after", _STRING, "The last id of the previous page."),
                _query("order", {"enum": ["asc", "desc"]}, "By creation time (default desc)."),
                _TENANT)),
    ("GET", "/v1/files/{file_id}"): _Op(
        "getFile", "One file", "files", _ok("File"), (400, *_AUTH, 404),
        params=(_FILE_ID, _TENANT)),
    ("DELETE", "/v1/files/{file_id}"): _Op(
        "deleteFile", "Delete a file", "files", _ok("FileDeleted"), (400, *_AUTH, 404, 409),
        params=(_FILE_ID, _TENANT)),
    ("GET", "/v1/files/{file_id}/content"): _Op(
        "getFileContent", "A file's bytes", "files",
        {"200": {"description": "The file.", "content": {"application/jsonl": {
            "schema": _STRING}}}}, (400, *_AUTH, 404), params=(_FILE_ID, _TENANT)),
    ("POST", "/v1/batches"): _Op(
        "createBatch", "Create a batch from an uploaded JSONL file", "batches", _ok("Batch"),
        (400, *_AUTH, 404, 413, 503), "BatchCreate"),
    ("GET", "/v1/batches"): _Op(
        "listBatches", "This tenant's batches, newest first", "batches", _ok("BatchList"),
        (400, *_AUTH, 404),
        params=(_query("limit", {"type": "integer"}, "How many (1-100, default 20)."),
                _query("after", _STRING, "The last id of the previous page."), _TENANT)),
    ("GET", "/v1/batches/{batch_id}"): _Op(
        "getBatch", "One batch with its progress", "batches", _ok("Batch"),
        (400, *_AUTH, 404), params=(_BATCH_ID, _TENANT)),
    ("POST", "/v1/batches/{batch_id}/cancel"): _Op(
        "cancelBatch", "Cancel a batch (what was answered is kept)", "batches", _ok("Batch"),
        (400, *_AUTH, 404, 409), params=(_BATCH_ID, _TENANT)),
    ("GET", "/v1/admin/tenants"): _Op("listTenants", "Tenants (the caller's own unless it is "
                                      "a platform admin)", "admin", _ok("TenantList")),
    ("POST", "/v1/admin/tenants"): _Op(
        "createTenant", "Create a tenant (platform admins)", "admin",
        _ok("Tenant", 201, "Created."), (400, *_AUTH, 413), "TenantCreate"),
    ("GET", "/v1/admin/keys"): _Op("listKeys", "The tenant's API keys", "admin",
                                   _ok("KeyList"), (400, *_AUTH), params=(_TENANT,)),
    ("POST", "/v1/admin/keys"): _Op(
        "createKey", "Create an API key (the secret is shown once)", "admin",
        _ok("KeyCreated", 201, "Created."), (400, *_AUTH, 404, 413), "KeyCreate",
        params=(_TENANT,)),
    ("POST", "/v1/admin/keys/{key_id}/revoke"): _Op(
        "revokeKey", "Revoke an API key", "admin", _ok("Key"), (400, *_AUTH, 404),
        params=(_path_param("key_id", "The key's id."), _TENANT)),
    ("POST", "/v1/admin/keys/{key_id}/rotate"): _Op(
        "rotateKey", "Rotate an API key; the old one works for `overlap_s` more", "admin",
        _ok("KeyRotated", 201, "Created."), (400, *_AUTH, 404, 413), "KeyRotate",
        body_required=False, params=(_path_param("key_id", "The key's id."), _TENANT)),
    ("GET", "/v1/admin/audit"): _Op(
        "listAudit", "The tenant's audit log, newest first", "admin", _ok("AuditList"),
        (400, *_AUTH),
        params=(_query("limit", {"type": "integer"}, "How many (1-1000, default 100)."),
                _query("action", _STRING, "Only this action, or a prefix ending in `*`."),
                _TENANT)),
    ("GET", "/v1/admin/alerts"): _Op(
        "listAlerts", "Alerts (open and resolved, newest first, with their history) and SLO "
        "error budgets", "admin", _ok("AlertList"), (400, *_AUTH),
        params=(_query("state", {"enum": ["open", "pending", "firing", "resolved"]},
                       "Only alerts in this state (`open`: pending or firing)."),
                _query("limit", {"type": "integer"}, "How many (1-1000, default 100)."),
                _TENANT)),
    ("GET", "/v1/traces"): _Op(
        "listTraces", "The tenant's traces, newest first", "traces", _ok("TraceList"),
        (400, *_AUTH),
        params=(_query("limit", {"type": "integer"}, "How many (1-1000, default 50)."),
                _query("status", {"type": "integer", "minimum": 100, "maximum": 599},
                       "Only this HTTP status."),
                _query("since", _TIME, "Only traces started at or after this time."),
                _query("service", _STRING, "Only this service or model alias."),
                _query("model", _STRING, "Only this model alias."),
                _query("errors", {"type": "boolean"}, "Only failed requests."),
                _query("text", _STRING, "Only traces whose error or payload has this text."),
                _TENANT)),
    ("GET", "/v1/traces/{trace_id}"): _Op(
        "getTrace", "One trace, by trace id or request id", "traces", _ok("Trace"),
        (400, *_AUTH, 404), params=(_path_param("trace_id", "A trace id or request id."), _TENANT)),
    ("GET", "/v1/traces/{trace_id}/tree"): _Op(
        "getTraceTree", "A request with the other requests of its W3C trace, and their spans",
        "traces", _ok("TraceTree"), (400, *_AUTH, 404),
        params=(_path_param("trace_id", "A trace id or request id."), _TENANT)),
    ("POST", "/v1/feedback"): _Op(
        "createFeedback", "Give feedback on one of the tenant's traces", "feedback",
        _ok("Feedback", 201, "Created."), (400, *_AUTH, 404, 413, 422), "FeedbackCreate"),
    ("GET", "/v1/feedback"): _Op(
        "listFeedback", "The tenant's feedback, newest first", "feedback", _ok("FeedbackList"),
        (400, *_AUTH),
        params=(_query("limit", {"type": "integer"}, "How many (1-1000, default 100)."),
                _query("since", _TIME, "Only feedback given at or after this time."),
                _query("service", _STRING, "Only this service or model alias."), _TENANT)),
    ("GET", "/v1/feedback/summary"): _Op(
        "summarizeFeedback", "Feedback count, mean score and labels per time bucket, service "
        "and version", "feedback", _ok("FeedbackSummary"), (400, *_AUTH),
        params=(_query("bucket", {"enum": ["minute", "hour", "day"]},
                       "Bucket size (default hour)."),
                _query("since", _TIME, "Start of the window (default: 7 days ago)."),
                _query("service", _STRING, "Only this service or model alias."), _TENANT)),
    ("GET", "/v1/admin/escalations"): _Op(
        "listEscalations", "The tenant's escalation queue, newest first", "escalations",
        _ok("EscalationList"), (400, *_AUTH),
        params=(_query("status", {"enum": ["open", "claimed", "answered", "resolved"]},
                       "Only this status."),
                _query("service", _STRING, "Only this model alias or service."),
                _query("overdue", {"type": "boolean"},
                       "Only tickets past their SLA (true) or not (false)."),
                _query("limit", {"type": "integer"}, "How many (1-1000, default 100)."),
                _TENANT)),
    ("GET", "/v1/admin/escalations/{escalation_id}"): _Op(
        "getEscalation", "One ticket with its conversation", "escalations", _ok("Escalation"),
        (400, *_AUTH, 404), params=(_ESCALATION_ID, _TENANT)),
    ("POST", "/v1/admin/escalations/{escalation_id}/claim"): _Op(
        "claimEscalation", "Claim a ticket for the calling reviewer", "escalations",
        _ok("Escalation"), (400, *_AUTH, 404, 409, 422), "EscalationClaim",
        body_required=False,
        params=(_ESCALATION_ID, _TENANT)),
    ("POST", "/v1/admin/escalations/{escalation_id}/answer"): _Op(
        "answerEscalation", "Answer a ticket (saved as labelled feedback)", "escalations",
        _ok("Escalation"), (400, *_AUTH, 404, 409, 413, 422), "EscalationAnswer",
        params=(_ESCALATION_ID, _TENANT)),
    ("POST", "/v1/admin/escalations/{escalation_id}/resolve"): _Op(
        "resolveEscalation", "Resolve (close) a ticket", "escalations", _ok("Escalation"),
        (400, *_AUTH, 404, 409, 422), "EscalationResolve", body_required=False,
        params=(_ESCALATION_ID, _TENANT)),
    ("GET", "/v1/escalations"): _Op(
        "listMyEscalations", "Tickets opened for the calling key", "inference",
        _ok("EscalationStatusList"), (400, *_AUTH),
        params=(_query("limit", {"type": "integer"}, "How many (1-1000, default 100)."),)),
    ("GET", "/v1/escalations/{escalation_id}"): _Op(
        "getMyEscalation", "Poll a ticket opened for the calling key (status and the "
        "reviewer's answer)", "inference", _ok("EscalationStatus"), (400, *_AUTH, 404),
        params=(_ESCALATION_ID,)),
    ("GET", "/v1/admin/webhooks/deliveries"): _Op(
        "listWebhookDeliveries", "The webhook delivery log, newest first", "webhooks",
        _ok("WebhookDeliveryList"), (400, *_AUTH),
        params=(_query("status", _DELIVERY_STATUS, "Only this status (`dead`: dead letter)."),
                _query("endpoint", _STRING, "Only this endpoint (e.g. "
                       "`alerts.channels.oncall`)."),
                _query("limit", {"type": "integer"}, "How many (1-1000, default 100)."),
                _TENANT)),
    ("GET", "/v1/admin/webhooks/deliveries/{delivery_id}"): _Op(
        "getWebhookDelivery", "One delivery with its body and attempt log", "webhooks",
        _ok("WebhookDelivery"), (400, *_AUTH, 404), params=(_DELIVERY_ID, _TENANT)),
    ("POST", "/v1/admin/webhooks/deliveries/{delivery_id}/redeliver"): _Op(
        "redeliverWebhook", "Queue a finished delivery again (same webhook-id, fresh "
        "attempts)", "webhooks", _ok("WebhookDelivery", 202, "Queued."),
        (400, *_AUTH, 404, 409), params=(_DELIVERY_ID, _TENANT)),
    ("GET", "/v1/admin/webhooks/endpoints"): _Op(
        "listWebhookEndpoints", "Configured webhook endpoints (names and hosts, never URLs or "
        "secrets)", "webhooks", _ok("WebhookEndpointList"), (400, *_AUTH),
        params=(_TENANT,)),
    ("GET", "/v1/admin/services/{name}/versions"): _Op(
        "listVersions", "A service's versions, aliases, serving plan and rollouts", "lifecycle",
        _ok("VersionList"), (400, *_AUTH, 404), params=(_SERVICE,)),
    ("POST", "/v1/admin/services/{name}/versions"): _Op(
        "registerVersion", "Register an immutable version (a function or a model file)",
        "lifecycle", {**_ok("Version", 201, "Registered."), **_ok("Version", 200,
                                                                  "Already registered.")},
        (400, *_AUTH, 404, 409, 413), "VersionRegister", params=(_SERVICE,)),
    ("GET", "/v1/admin/services/{name}/versions/{version}"): _Op(
        "getVersion", "One version of a service", "lifecycle", _ok("Version"),
        (400, *_AUTH, 404),
        params=(_SERVICE, _path_param("version", "A version number."))),
    ("POST", "/v1/admin/services/{name}/promote"): _Op(
        "promoteVersion", "Make a version stable now", "lifecycle", _ok("Promoted"),
        (400, *_AUTH, 404, 413), "Promote", params=(_SERVICE,)),
    ("POST", "/v1/admin/services/{name}/rollback"): _Op(
        "rollbackVersion", "Roll back a running rollout, or stable to its previous version",
        "lifecycle", _ok("RolledBack"), (400, *_AUTH, 404, 409, 413), "Rollback",
        body_required=False, params=(_SERVICE,)),
    ("POST", "/v1/admin/services/{name}/rollouts"): _Op(
        "startRollout", "Start a canary or shadow rollout of a version", "lifecycle",
        _ok("Rollout", 201, "Started."), (400, *_AUTH, 404, 409, 413), "RolloutStart",
        params=(_SERVICE,)),
    ("GET", "/v1/admin/services/{name}/evals"): _Op(
        "listEvals", "Stored eval results of a service, newest first", "lifecycle",
        _ok("EvalList"), (400, *_AUTH, 404), params=(_SERVICE,)),
    ("GET", "/v1/admin/models/{alias}/versions"): _Op(
        "listModelVersions", "A model alias's configuration versions, which one serves, and "
        "its rollouts", "lifecycle", _ok("ModelVersionList"), (400, *_AUTH, 404),
        params=(_ALIAS,)),
    ("POST", "/v1/admin/models/{alias}/promote"): _Op(
        "promoteModelVersion", "Make a configuration version of a model alias stable now (it "
        "stays pinned until the config file names another configuration)", "lifecycle",
        _ok("Promoted"), (400, *_AUTH, 404, 413), "Promote", params=(_ALIAS,)),
    ("POST", "/v1/admin/models/{alias}/rollback"): _Op(
        "rollbackModelVersion", "Roll back a model alias's running rollout, or stable to its "
        "previous version", "lifecycle", _ok("RolledBack"), (400, *_AUTH, 404, 409, 413),
        "Rollback", body_required=False, params=(_ALIAS,)),
    ("POST", "/v1/admin/models/{alias}/rollouts"): _Op(
        "startModelRollout", "Start a canary or shadow rollout of a model alias's "
        "configuration version", "lifecycle", _ok("Rollout", 201, "Started."),
        (400, *_AUTH, 404, 409, 413), "RolloutStart", params=(_ALIAS,)),
    ("GET", "/v1/admin/models/{alias}/versions/{version}"): _Op(
        "getModelVersion", "One configuration version of a model alias", "lifecycle",
        _ok("Version"), (400, *_AUTH, 404),
        params=(_ALIAS, _path_param("version", "A version number."))),
    ("POST", "/v1/admin/reload"): _Op(
        "reload", "Reload the config without downtime (new targets load beside the running "
        "ones, then swap)", "lifecycle", _ok("Reloaded"), (*_AUTH, 409)),
    ("GET", "/v1/admin/status"): _Op("getStatus", "Live state: circuits, admission, budgets, "
                                     "the trace writer", "admin", _ok("Status")),
    ("GET", "/metrics"): _Op(
        "getMetrics", "Prometheus metrics (public when `server.metrics_public`)", "health",
        {"200": {"description": "Prometheus text exposition.",
                 "content": {"text/plain": {"schema": _STRING}}}}),
    ("GET", "/livez"): _Op("livez", "Liveness probe", "health", _ok("Live"), ()),
    ("GET", "/readyz"): _Op(
        "readyz", "Readiness probe", "health",
        {"200": {"description": "Ready (or `degraded`: Redis is unreachable and "
                              "`state.required_for_ready` is false).",
                 "content": _json(_ref("Ready"))},
         "503": {"description": "Not ready (starting, draining, the store is unreachable, or "
                                "Redis is, with `state.required_for_ready`).",
                 "content": _json(_ref("Ready"))}}, ()),
    ("GET", "/openapi.json"): _Op("getOpenAPI", "This document", "meta", _ok("OpenAPI")),
}


def _operation(op: _Op, scope: str | None) -> JSON:
    errors = set(op.errors)
    if scope is not None and any(p.get("in") in ("path", "query") for p in op.params):
        errors.add(400)  # a NUL character (%00) in a parameter that reaches the store
    description = (f"Needs scope `{scope}`." if scope is not None
                   else "Public: no credentials needed.")
    out: JSON = {
        "operationId": op.id, "summary": op.summary, "description": description,
        "tags": [op.tag], "x-scope": scope,
        "security": [{"bearer": []}] if scope is not None else [],
        "responses": {**op.ok, **{str(s): _error_response(s, op.error_schema)
                                  for s in sorted(errors)}},
    }
    if op.params:
        out["parameters"] = list(op.params)
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": _json(_ref(op.body))}
    out.update(op.extra)
    return out


def openapi_path(route_path: str) -> str:
    """`/v1/models/{model:path}` -> `/v1/models/{model}` (OpenAPI has no converters)."""
    return _CONVERTER.sub(r"{\1}", route_path)


def route_operations(routes: Sequence[BaseRoute]) -> list[tuple[str, str, ScopedRoute]]:
    """(method, OpenAPI path, route) for every operation the route table serves (HEAD is
    Starlette's automatic companion of GET, not an operation of its own). The dashboard's
    HTML pages are not API operations (`include_in_schema=False`)."""
    out = []
    for route in routes:
        if isinstance(route, ScopedRoute) and route.include_in_schema:
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    out.append((method, openapi_path(route.path), route))
    return out


def openapi_document(routes: Sequence[BaseRoute]) -> JSON:
    """The OpenAPI 3.1 document for `routes` (the app's route table)."""
    paths: dict[str, JSON] = {}
    for method, path, route in route_operations(routes):
        op = _OPERATIONS.get((method, path))
        if op is not None:
            paths.setdefault(path, {})[method.lower()] = _operation(op, route.scope)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Shipyard gateway", "version": __version__,
                 "description": "An OpenAI-compatible AI gateway. Every error has the OpenAI "
                                "shape `{\"error\": {\"message\", \"type\", \"param\", "
                                "\"code\"}}`."},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": {f"E{s}": {"description": text, "content": _json(_ref("Error"))}
                          for s, text in _ERRORS.items()},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An API key (`sk-sy-…` or from `auth.api_keys`) or an OIDC "
                               "JWT; Azure-style `api-key: <key>` also works."}},
        },
        "security": [{"bearer": []}],
    }


def openapi_route(gateway: Gateway) -> ScopedRoute:
    """`GET /openapi.json`: the document of the routes the app serves (authenticated)."""
    cached: list[bytes] = []

    async def endpoint(request: Request) -> Response:
        await gateway.authorize(request, "models:read")
        if not cached:
            cached.append(orjson.dumps(openapi_document(request.app.routes)))
        return json_response(None, body=cached[0])

    return ScopedRoute("/openapi.json", endpoint, methods=["GET"], scope="models:read")
