"""`shipyard.errors`: one tree, an HTTP status on every class, and the pinned OpenAI error shape."""

from __future__ import annotations

import importlib
import json
import pkgutil

import pytest

import shipyard
from shipyard import errors
from shipyard.errors import (
    ClientError,
    ModelNotFound,
    NotFound,
    ShipyardError,
    UpstreamError,
    UpstreamTimeout,
)


def _subclasses(cls: type[ShipyardError]) -> list[type[ShipyardError]]:
    out: list[type[ShipyardError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def _import_everything() -> None:
    # Subclasses defined outside errors.py (e.g. by providers) must follow the same rules.
    for module in pkgutil.walk_packages(shipyard.__path__, "shipyard."):
        if ".migrations" not in module.name and module.name != "shipyard.__main__":
            importlib.import_module(module.name)


_import_everything()
ALL = [ShipyardError, *_subclasses(ShipyardError)]
DOCUMENTED = [c for c in ALL if c.__module__ == "shipyard.errors"]


def _instance(cls: type[ShipyardError], message: str, **kwargs: str) -> ShipyardError:
    if cls.__name__ == "UpstreamRejected":  # keeps the upstream's own 4xx status
        return cls(message, status=429, **kwargs)  # type: ignore[call-arg]
    return cls(message, **kwargs)
EXPECTED = {  # class: (status, type, code)
    "ShipyardError": (500, "internal_error", None),
    "ConfigError": (500, "config_error", None),
    "ClientError": (400, "invalid_request_error", None),
    "InvalidRequest": (400, "invalid_request_error", None),
    "InvalidJSON": (400, "invalid_request_error", "invalid_json"),
    "ValidationFailed": (422, "invalid_request_error", "validation_error"),
    "PayloadTooLarge": (413, "invalid_request_error", "payload_too_large"),
    "AuthenticationFailed": (401, "authentication_error", "invalid_api_key"),
    "PermissionDenied": (403, "permission_error", "permission_denied"),
    "RateLimited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "NotFound": (404, "invalid_request_error", "not_found"),
    "ModelNotFound": (404, "invalid_request_error", "model_not_found"),
    "Conflict": (409, "invalid_request_error", "conflict"),
    "MethodNotAllowed": (405, "invalid_request_error", "method_not_allowed"),
    "CapacityError": (503, "server_error", "overloaded"),
    "StateUnavailable": (503, "server_error", "state_unavailable"),
    "StoreUnavailable": (503, "server_error", "store_unavailable"),
    "UpstreamError": (502, "upstream_error", "upstream_error"),
    "UpstreamTimeout": (504, "upstream_error", "upstream_timeout"),
    "UpstreamUnavailable": (502, "upstream_error", "upstream_unavailable"),
    "CircuitOpen": (503, "upstream_error", "circuit_open"),
    "ServiceError": (500, "service_error", "service_error"),
}


def test_the_tree_is_exactly_the_documented_one() -> None:
    assert sorted(c.__name__ for c in DOCUMENTED) == sorted(EXPECTED)
    assert sorted(errors.__all__) == sorted(EXPECTED)
    for name in EXPECTED:
        assert name in (errors.__doc__ or ""), f"{name} is missing from the tree docstring"


@pytest.mark.parametrize("cls", DOCUMENTED, ids=lambda c: c.__name__)
def test_status_type_and_code(cls: type[ShipyardError]) -> None:
    assert (cls.status, cls.type, cls.code) == EXPECTED[cls.__name__]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_class_has_an_http_status(cls: type[ShipyardError]) -> None:
    exc = _instance(cls, "Something went wrong.")
    assert 400 <= cls.status <= 599
    assert 400 <= exc.status <= 599
    if issubclass(cls, ClientError):
        assert 400 <= cls.status <= 499
        assert 400 <= exc.status <= 499
    else:
        assert exc.status >= 500


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_to_dict_is_the_openai_error_shape(cls: type[ShipyardError]) -> None:
    exc = _instance(cls, "Parameter 'x' is 3; it must be 1.", param="x")
    body = exc.to_dict()

    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == "Parameter 'x' is 3; it must be 1."
    assert body["error"]["type"] == exc.type
    assert body["error"]["param"] == "x"
    assert body["error"]["code"] == exc.code
    assert isinstance(body["error"]["type"], str)
    assert json.loads(json.dumps(body)) == body  # plain JSON values only


def test_pinned_json_shape() -> None:
    body = ModelNotFound("The model 'gpt-9' does not exist.", param="model").to_dict()
    assert json.dumps(body, sort_keys=True) == (
        '{"error": {"code": "model_not_found", "message": "The model \'gpt-9\' does not '
        'exist.", "param": "model", "type": "invalid_request_error"}}'
    )


def test_code_override_is_per_instance() -> None:
    custom = NotFound("No such route.", code="route_not_found")
    assert custom.to_dict()["error"]["code"] == "route_not_found"
    assert NotFound("Again.").code == "not_found"  # the class default is untouched
    assert custom.headers == {}
    assert str(custom) == "No such route."


def test_upstream_errors_keep_the_upstream_status_and_headers() -> None:
    exc = UpstreamTimeout("The upstream took too long.", upstream_status=None,
                          headers={"Retry-After": "1"})
    assert isinstance(exc, UpstreamError)
    assert exc.headers == {"Retry-After": "1"}
    assert UpstreamError("Bad gateway.", upstream_status=500).upstream_status == 500
    assert "upstream_status" not in exc.to_dict()["error"]
