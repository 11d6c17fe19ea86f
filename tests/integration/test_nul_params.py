"""A NUL character (%00) in a path or query parameter is a 400 naming it, never a 500.

PostgreSQL text cannot hold a NUL, so before the gateway refused them up front, a cursor like
`GET /v1/batches?after=%00` reached the store and came back as a 500 (found by the
schemathesis fuzz on PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from conftest import API_KEY, gateway_config, launch_gateway

CASES = [
    ("GET", "/v1/batches?after=abc%00", "after"),
    ("GET", "/v1/jobs?target=&after=x%00y", "after"),
    ("GET", "/v1/jobs?status=queued%00", "status"),
    ("GET", "/v1/files?purpose=batch%00", "purpose"),
    ("GET", "/v1/jobs/job_%00", "job_id"),
    ("POST", "/v1/batches/batch_%00x/cancel", "batch_id"),
]


def test_a_nul_is_a_400_naming_the_parameter(postgres_url: str, tmp_path: Path) -> None:
    gateway = launch_gateway(tmp_path, gateway_config(None, postgres_url))
    headers = {"authorization": f"Bearer {API_KEY}"}
    try:
        for method, url, param in CASES:
            response = httpx.request(method, gateway.url + url, headers=headers, timeout=10)
            assert response.status_code == 400, (url, response.text)
            error = response.json()["error"]
            assert "NUL character" in error["message"], error
            assert "remove it" in error["message"], error
            assert error["param"] == param, (url, error)
        # The same routes without the NUL answer as usual.
        assert httpx.get(gateway.url + "/v1/batches", headers=headers).status_code \
            == 200
        assert httpx.get(gateway.url + "/v1/jobs/job_x", headers=headers).status_code == 404
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.output()
