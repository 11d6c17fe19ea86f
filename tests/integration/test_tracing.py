"""Tracing end to end: a real `shipyard serve` in front of a failing `shipyard sim` and a
recording upstream, exporting to a real OTLP/HTTP receiver, and keeping spans in the store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from loadgen import faults
from local_servers import OTLPReceiver, RecordingUpstream
from sqlalchemy import create_engine

from conftest import API_KEY, Proc
from shipyard.observe.tracing import parse_traceparent
from shipyard.store import get_spans, get_trace

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def config(folder: Path, primary: Proc, backup_url: str, otlp_url: str | None) -> str:
    otlp = (f"  otlp: {{endpoint: '{otlp_url}/v1/traces', schedule_delay_s: 0.05}}"
            if otlp_url else "")
    return f"""
store: {{url: "sqlite:///{folder}/store.db"}}
traces:
  flush_interval_s: 0.05
  sample_spans: 1.0
{otlp}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  primary: {{kind: openai, base_url: "{primary.url}/v1"}}
  backup: {{kind: openai, base_url: "{backup_url}/v1"}}
models:
  demo:
    provider: primary
    model: sim-chat
    fallbacks: [backup]
    retry: {{attempts: 3, backoff_base_s: 0.01}}
  backup:
    provider: backup
    model: rec-chat
"""


def ask(gateway: Proc, headers: dict[str, str] | None = None) -> Any:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0,
                       default_headers=headers or {}) as client:
        return client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": "hi"}])


def stored_spans(store: str, trace_id: str, count: int) -> list[dict[str, Any]]:
    engine = create_engine(store)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            spans = get_spans(engine, trace_id)
            if len(spans) >= count:
                return spans
            time.sleep(0.05)
        raise AssertionError(f"only {get_spans(engine, trace_id)} stored")
    finally:
        engine.dispose()


def tree(spans: list[dict[str, Any]], id_key: str = "span_id") -> dict[str | None, list[str]]:
    children: dict[str | None, list[str]] = {}
    for span in sorted(spans, key=lambda s: s.get("start", s.get("start_ms"))):
        children.setdefault(span["parent_id"], []).append(span["name"])
    return children


def test_retry_and_fallback_span_tree_exported_and_stored(
        start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
        tmp_path: Path) -> None:
    primary = start_sim()
    faults(primary, error_rates={"500": 1.0})
    with OTLPReceiver() as receiver, RecordingUpstream() as backup:
        gateway = start_gateway(config(tmp_path, primary, backup.url, receiver.url))
        raw = ask(gateway, {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
        assert raw.http_response.status_code == 200
        assert raw.headers["x-shipyard-model"] == "backup"
        record_id = raw.headers["x-shipyard-trace-id"]

        spans = receiver.wait_for(lambda s: any(x["name"] == "store.write" for x in s))
        by_id = {s["span_id"]: s for s in spans}
        assert {s["trace_id"] for s in spans} == {CALLER_TRACE}
        (root,) = [s for s in spans if s["parent_id"] == CALLER_SPAN]
        assert root["name"] == "chat demo" and root["kind"] == 2  # SPAN_KIND_SERVER
        assert root["attributes"]["shipyard.record_id"] == record_id
        assert root["attributes"]["http.response.status_code"] == 200
        assert root["resource"]["service.name"] == "shipyard"
        children = tree(spans)
        assert children[root["span_id"]] == ["auth", "upstream", "store.write"]
        (upstream,) = [s for s in spans if s["name"] == "upstream"]
        assert children[upstream["span_id"]] == [
            "upstream.attempt", "backoff", "upstream.attempt", "backoff", "upstream.attempt",
            "upstream.attempt"]
        attempts = [s for s in spans if s["name"] == "upstream.attempt"]
        attempts.sort(key=lambda s: s["start"])
        assert [a["attributes"]["shipyard.model"] for a in attempts] == [
            "demo", "demo", "demo", "backup"]
        assert [a["attributes"]["shipyard.attempt"] for a in attempts] == [1, 2, 3, 1]
        assert [a["attributes"]["shipyard.fallback"] for a in attempts] == [
            False, False, False, True]
        assert [a["status"] for a in attempts] == [2, 2, 2, 0]  # ERROR x3, then UNSET
        assert attempts[0]["attributes"]["shipyard.outcome"] == "UpstreamError"
        assert all(a["kind"] == 3 for a in attempts)  # SPAN_KIND_CLIENT
        for span in spans:  # children lie within their parents
            parent = by_id.get(span["parent_id"])
            if parent is not None:
                assert parent["start"] <= span["start"] and span["end"] <= parent["end"] + 1000

        # traceparent out: the backup saw our trace with its attempt span as the parent.
        (seen,) = backup.headers
        trace_id, parent_id, flags = parse_traceparent(seen["traceparent"]) or ("", "", "")
        assert (trace_id, parent_id, flags) == (CALLER_TRACE, attempts[-1]["span_id"], "01")

        # The same spans are in the store, keyed by the caller's trace id.
        stored = stored_spans(f"sqlite:///{tmp_path}/store.db", CALLER_TRACE, len(spans))
        assert {s["span_id"] for s in stored} == {s["span_id"] for s in spans}
        assert tree(stored)[root["span_id"]] == ["auth", "upstream", "store.write"]
        assert all(s["record_id"] == record_id for s in stored)
        engine = create_engine(f"sqlite:///{tmp_path}/store.db")
        trace = get_trace(engine, record_id)
        engine.dispose()
        assert trace is not None and trace["trace_id"] == CALLER_TRACE
        gateway.stop()  # while the receiver still answers its last export

    shown = subprocess.run(
        [sys.executable, "-m", "shipyard", "traces", "show", record_id, "--spans",
         "--store-url", f"sqlite:///{tmp_path}/store.db"], capture_output=True, text=True,
        check=False, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    lines = [line.strip() for line in shown.stdout.splitlines()]
    names = [line.split()[0] for line in lines[2:] if line]
    assert names == ["chat", "auth", "upstream", "upstream.attempt", "backoff",
                     "upstream.attempt", "backoff", "upstream.attempt", "upstream.attempt",
                     "store.write"]
    assert sum("UpstreamError" in line for line in lines) == 3


def test_new_trace_without_traceparent_and_unsampled_caller(
        start_gateway: Callable[..., Proc], start_sim: Callable[..., Proc],
        tmp_path: Path) -> None:
    primary = start_sim()
    faults(primary, error_rates={"500": 1.0})
    with OTLPReceiver() as receiver, RecordingUpstream() as backup:
        gateway = start_gateway(config(tmp_path, primary, backup.url, receiver.url))
        raw = ask(gateway)
        record_id = raw.headers["x-shipyard-trace-id"]
        parsed = parse_traceparent(backup.headers[-1]["traceparent"])
        assert parsed is not None and parsed[0] == record_id  # a new trace, named by the record

        # A caller that did not sample: passed on as not sampled, kept in the store, not
        # exported.
        unsampled = "a" * 32
        ask(gateway, {"traceparent": f"00-{unsampled}-{'b' * 16}-00"})
        assert parse_traceparent(backup.headers[-1]["traceparent"]) == (
            unsampled, parse_traceparent(backup.headers[-1]["traceparent"])[1], "00")  # type: ignore[index]
        assert len(stored_spans(f"sqlite:///{tmp_path}/store.db", unsampled, 5)) >= 5
        receiver.wait_for(lambda s: any(x["trace_id"] == record_id for x in s))
        time.sleep(0.3)
        assert not [s for s in receiver.spans if s["trace_id"] == unsampled]

        # An invalid traceparent is ignored (a fresh trace), never an error.
        raw = ask(gateway, {"traceparent": "00-zz-nonsense-01"})
        assert raw.http_response.status_code == 200
        gateway.stop()


def test_export_sample_ratio_zero_stores_but_does_not_export(
        start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    with OTLPReceiver() as receiver, RecordingUpstream() as upstream:
        gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces:
  flush_interval_s: 0.05
  sample_spans: 1.0
  otlp: {{endpoint: '{receiver.url}/v1/traces', schedule_delay_s: 0.05, sample_ratio: 0}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "{upstream.url}/v1"}}
models:
  demo: {{provider: up, model: rec-chat}}
""")
        record_id = ask(gateway).headers["x-shipyard-trace-id"]
        assert parse_traceparent(upstream.headers[-1]["traceparent"])[2] == "00"  # type: ignore[index]
        names = {s["name"] for s in stored_spans(f"sqlite:///{tmp_path}/store.db", record_id, 4)}
        assert names == {"chat", "auth", "upstream", "upstream.attempt", "store.write"}
        # A caller that sampled is followed even at ratio 0.
        ask(gateway, {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
        receiver.wait_for(lambda s: any(x["name"] == "store.write" for x in s))
        gateway.stop()
    assert {s["trace_id"] for s in receiver.spans} == {CALLER_TRACE}
