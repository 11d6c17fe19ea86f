"""Shedding under overload costs far less than serving: a request that finds no slot of the
gateway's admission is refused before it is read or authenticated, and counted in metrics and
rollups without a trace row of its own (a real `shipyard serve`, raw sockets). The refusal is
written by the server's protocol (`shipyard.gateway.protocol`) as soon as the headers are
parsed; the connection stays usable for the next request."""

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


def _metrics(gateway: Proc) -> str:
    scrape = urllib.request.Request(f"{gateway.url}/metrics",
                                    headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(scrape, timeout=5) as response:
        return str(response.read().decode())


def _wait_for_in_flight(gateway: Proc, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while f"shipyard_requests_in_flight {count:.1f}" not in _metrics(gateway):
        assert time.monotonic() < deadline, f"never {count} requests in flight"
        time.sleep(0.02)


def _post(path: str, body: dict[str, object], *, auth: bool) -> bytes:
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
            f"Content-Length: {len(data)}"]
    if auth:
        head.append(f"Authorization: Bearer {API_KEY}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


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
    _wait_for_in_flight(gateway, 1)  # the one slot is taken
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


def test_the_connection_of_a_refused_request_serves_the_next_one(
        start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces: {{flush_interval_s: 0.05}}
server: {{max_in_flight: 1, max_queue: 0}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  slow: {{kind: sim, latency_ms: 1500}}
  fast: {{kind: sim}}
models:
  slow: {{provider: slow, model: sim-chat}}
  fast: {{provider: fast, model: sim-chat}}
""")
    chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}

    def occupy() -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(_post("/v1/chat/completions", {**chat, "model": "slow"}, auth=True))
            assert _read_response(sock).startswith("HTTP/1.1 200")

    holder = threading.Thread(target=occupy)
    holder.start()
    _wait_for_in_flight(gateway, 1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        # Refusals on one kept-alive connection, bodies sent and dropped unread.
        sock.sendall(_post("/v1/chat/completions", chat, auth=False))
        openai_shape = _read_response(sock)
        sock.sendall(_post("/v1/messages", {"model": "fast", "max_tokens": 5,
                                            "messages": chat["messages"]}, auth=False))
        anthropic_shape = _read_response(sock)
        sock.sendall(_post("/v1/services/made-up-name/invoke", {"input": {}}, auth=False))
        unknown_service = _read_response(sock)
        # A client that asks to close gets its refusal, then the end of the connection.
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as closing:
            closing.sendall(_post("/v1/chat/completions", chat, auth=False).replace(
                b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"))
            closed = _read_response(closing)
            assert closing.recv(1) == b""
        holder.join(30)
        _wait_for_in_flight(gateway, 0)
        # The slot is free again: the same connection is served.
        sock.sendall(_post("/v1/chat/completions", chat, auth=True))
        served = _read_response(sock)
    for answer in (openai_shape, anthropic_shape, unknown_service):
        assert answer.startswith("HTTP/1.1 503"), answer
        assert "retry-after: 1" in answer.lower()
        assert "connection: close" not in answer.lower()
    assert closed.startswith("HTTP/1.1 503") and "connection: close" in closed.lower()
    error = json.loads(openai_shape.partition("\r\n\r\n")[2])["error"]
    assert error["code"] == "overloaded" and error["type"] == "server_error"
    assert error["message"].startswith("The gateway is at capacity")
    body = json.loads(anthropic_shape.partition("\r\n\r\n")[2])
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert served.startswith("HTTP/1.1 200"), served

    metrics = _metrics(gateway)
    assert 'shipyard_requests_shed_total{scope="global"} 4.0' in metrics
    # A service name from an unauthenticated path is no metric label (nor a new series).
    assert "made-up-name" not in metrics
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    try:
        deadline = time.monotonic() + 15
        while True:  # sheds reach the rollups within a second, summed into one record
            with engine.connect() as connection:
                shed = connection.execute(select(func.sum(trace_rollups.c.shed)).where(
                    trace_rollups.c.span == 1)).scalar()
                rows = connection.execute(select(func.count()).select_from(traces)).scalar()
            if (shed == 4 and rows == 2) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (shed, rows) == (4, 2)  # two served requests' rows, no row for a refusal
    finally:
        engine.dispose()
