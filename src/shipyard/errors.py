"""One exception tree for Shipyard; every user-facing class carries its HTTP status.

```
ShipyardError                       500 internal_error
├── ConfigError                     (startup; not an HTTP answer)
├── ClientError                     400 invalid_request_error
│   ├── InvalidRequest              400 invalid_request_error
│   ├── InvalidJSON                 400 invalid_request_error / invalid_json
│   ├── ValidationFailed            422 invalid_request_error / validation_error
│   ├── PayloadTooLarge             413 invalid_request_error / payload_too_large
│   ├── AuthenticationFailed        401 authentication_error / invalid_api_key
│   ├── RateLimited                 429 rate_limit_error / rate_limit_exceeded (Retry-After)
│   ├── PermissionDenied            403 permission_error
│   ├── NotFound                    404 invalid_request_error / not_found
│   │   └── ModelNotFound           404 invalid_request_error / model_not_found
│   ├── Conflict                    409 invalid_request_error / conflict
│   └── MethodNotAllowed            405 invalid_request_error / method_not_allowed
├── CapacityError                   503 server_error / overloaded (sent with Retry-After)
│   ├── StateUnavailable            503 server_error / state_unavailable (Redis unreachable)
│   └── StoreUnavailable            503 server_error / store_unavailable (sent with Retry-After)
├── UpstreamError                   502 upstream_error
│   ├── UpstreamTimeout             504 upstream_error / upstream_timeout
│   ├── UpstreamUnavailable         502 upstream_error / upstream_unavailable
│   └── CircuitOpen                 503 upstream_error / circuit_open (sent with Retry-After)
└── ServiceError                    500 service_error (a hosted function raised)
```

The gateway renders all of them through one handler: on `/v1/*` in the OpenAI error shape
`{"error": {"message", "type", "param", "code"}}`. Messages are full sentences that name the
field, the value and the fix.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationFailed",
    "CapacityError",
    "CircuitOpen",
    "ClientError",
    "ConfigError",
    "Conflict",
    "InvalidJSON",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ServiceError",
    "ShipyardError",
    "StateUnavailable",
    "StoreUnavailable",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "ValidationFailed",
]


class ShipyardError(Exception):
    """Root of every error Shipyard raises on purpose."""

    status: int = 500
    type: str = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(ShipyardError):
    """The configuration is invalid; raised at startup, before anything is served."""

    type = "config_error"


class ClientError(ShipyardError):
    """The caller made a mistake; always a 4xx."""

    status = 400
    type = "invalid_request_error"


class InvalidRequest(ClientError):
    status = 400


class InvalidJSON(ClientError):
    status = 400
    code = "invalid_json"


class ValidationFailed(ClientError):
    status = 422
    code = "validation_error"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class AuthenticationFailed(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class RateLimited(ClientError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class PermissionDenied(ClientError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ClientError):
    """The resource is in a state that does not allow the action (e.g. claiming a resolved
    escalation ticket); the message names the state."""

    status = 409
    code = "conflict"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class CapacityError(ShipyardError):
    """Shipyard is at capacity or shutting down; the caller should retry later."""

    status = 503
    type = "server_error"
    code = "overloaded"


class StateUnavailable(CapacityError):
    """The shared state (Redis) cannot be reached and the feature's outage policy is to fail
    closed; the caller should retry later (sent with Retry-After)."""

    code = "state_unavailable"
class StoreUnavailable(CapacityError):
    """The store cannot be reached and the answer depends on it (e.g. a key never seen before
    an outage); the caller should retry shortly."""

    code = "store_unavailable"


class UpstreamError(ShipyardError):
    """The upstream model failed in a way that is not the caller's fault."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.upstream_status = upstream_status


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"


class ServiceError(ShipyardError):
    """A hosted Python function raised an exception."""

    status = 500
    type = "service_error"
    code = "service_error"


class CircuitOpen(UpstreamError):
    """Every deployment (and fallback) of a model has an open circuit: fail fast."""

    status = 503
    code = "circuit_open"
