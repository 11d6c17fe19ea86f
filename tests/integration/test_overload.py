"""Shedding under overload costs far less than serving: a request that finds no slot of the
gateway's admission is refused before it is read or authenticated, and counted in metrics and
rollups without a trace row of its own (a real `shipyard serve`, raw sockets)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from conftest import API_KEY, Proc
from shipyard.store import create_store_engine
from shipyard.store.tables import trace_rollups, traces


def _read_response(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return (head + b"\r\n\r\n" + rest).decode()


def test_a_shed_request_is_refused_unread_and_leaves_no_trace_row(
        start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces: {{flush_interval_s: 0.05}}
server: {{max_in_flight: 1, max_queue: 0}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  slow: {{kind: sim, latency_ms: 2000}}
models:
  slow: {{provider: slow, model: sim-chat}}
""")
    body = json.dumps({"model": "slow", "messages": [{"role": "user", "content": "hi"}]})

    def occupy() -> None:
        request = urllib.request.Request(
            f"{gateway.url}/v1/chat/completions", data=body.encode(), method="POST",
            headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200

    holder = threading.Thread(target=occupy)
    holder.start()
    time.sleep(0.5)  # the one slot is taken
    # Headers promise a body that never comes, and no credentials: the refusal needs neither.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        answer = _read_response(sock)
        took = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 503"), answer
    assert "retry-after: 1" in answer.lower()
    assert "The gateway is at capacity" in answer
    assert took < 1.0
    holder.join(30)

    scrape = urllib.request.Request(f"{gateway.url}/metrics",
                                    headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(scrape, timeout=5) as response:
        metrics = response.read().decode()
    assert 'shipyard_requests_shed_total{scope="global"} 1.0' in metrics
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    try:
        for _ in range(100):
            with engine.connect() as connection:
                shed = connection.execute(select(func.sum(trace_rollups.c.shed)).where(
                    trace_rollups.c.span == 1)).scalar()
                rows = connection.execute(select(func.count()).select_from(traces)).scalar()
                refused = connection.execute(select(func.count()).select_from(traces).where(
                    traces.c.status == 503)).scalar()
            if shed and rows:
                break
            time.sleep(0.05)
        assert shed == 1 and refused == 0 and rows == 1  # only the served request's row
    finally:
        engine.dispose()
