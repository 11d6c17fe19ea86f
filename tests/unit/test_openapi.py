"""The OpenAPI document matches the route table, both ways, and is valid OpenAPI 3.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from shipyard.config import parse_config
from shipyard.gateway.app import FastPath, create_app
from shipyard.gateway.openapi import openapi_document, route_operations

KEY = "sk-test-" + "u" * 24


@pytest.fixture
def app(tmp_path: Path) -> FastPath:
    return create_app(parse_config(f"""
store: {{url: "sqlite:///{tmp_path}/s.db"}}
auth: {{api_keys: ["{KEY}"]}}
"""))


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_every_route_is_documented_and_every_operation_is_served(app: FastPath) -> None:
    served = {(method, path) for method, path, _ in route_operations(app.routes)}
    documented = _operations(openapi_document(app.routes))
    assert served - documented == set(), "routes without a documented operation"
    assert documented - served == set(), "documented operations no route serves"
    assert ("GET", "/openapi.json") in served


def test_document_is_valid_openapi_31(app: FastPath) -> None:
    doc = openapi_document(app.routes)
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_scopes_and_security_follow_the_routes(app: FastPath) -> None:
    doc = openapi_document(app.routes)
    for method, path, route in route_operations(app.routes):
        operation = doc["paths"][path][method.lower()]
        assert operation["x-scope"] == route.scope, (method, path)
        if route.scope is None:
            assert operation["security"] == [], path
        else:
            assert operation["security"] == [{"bearer": []}], path
            assert route.scope in operation["description"]
            assert {"401", "403"} <= set(operation["responses"]), path
    public = {path for path, item in doc["paths"].items()
              if any(op["security"] == [] for op in item.values())}
    assert public == {"/livez", "/readyz"}


def test_every_error_is_the_openai_error_object(app: FastPath) -> None:
    doc = openapi_document(app.routes)
    for name, response in doc["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}, name
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path.startswith("/v1/messages"):
                    # The Anthropic front door answers errors in Anthropic's shape.
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/AnthropicError"}, (method, path, status)
                elif int(status) >= 400 and path != "/readyz":
                    assert response == {"$ref": f"#/components/responses/E{status}"}, (
                        method, path, status)


def test_served_at_openapi_json_with_credentials_only(app: FastPath) -> None:
    with TestClient(app) as client:  # type: ignore[arg-type]
        assert client.get("/openapi.json").status_code == 401
        answer = client.get("/openapi.json", headers={"authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert _operations(answer.json()) == _operations(openapi_document(app.routes))
