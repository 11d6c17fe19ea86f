"""The model worker: `python -m shipyard.providers.local.worker '<settings JSON>'`.

Why a process of its own rather than a thread of the gateway:
- llama.cpp is native code: a fault in it (this machine's CPU reports AMX, and llama.cpp's AMX
  kernel segfaults under its hypervisor) would kill the gateway and every request in flight.
  Here it kills one worker; the gateway answers that request with a 502 and starts a new one.
- generation holds the GIL between native calls (sampling, detokenizing): in the gateway's
  process it would slow every other request; here it runs on its own core.
- a generation that must stop (client gone, deadline passed) is cancelled between two tokens;
  a worker that does not answer can be killed, which a thread cannot.

Protocol: one JSON object per line. The gateway writes `{"id", "endpoint", "body", "stream"}`
requests and `{"cancel": id}`; the worker writes `{"ready": info}` once loaded, then per
request `{"id", "chunk"}` events and a final `{"id", "result"}`, `{"id", "end": true}` or
`{"id", "error": {"status", "message", "param", "code"}}`. It answers one request at a time
and exits when its standard input closes (the gateway stopped or died).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import traceback
from typing import Any, BinaryIO

import orjson

from shipyard.providers.local.engine import LocalModel, LocalRequestError, Settings

__all__ = ["main"]


class _Channel:
    """Requests read by a thread (so a cancel arrives mid-generation), events written here."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self.writer = writer
        self.requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.closed = threading.Event()  # the gateway is gone: stop generating, exit
        self._thread = threading.Thread(target=self._read, args=(reader,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self, reader: BinaryIO) -> None:
        for line in reader:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and "cancel" in message:
                self.cancelled.add(int(message["cancel"]))
            elif isinstance(message, dict):
                self.requests.put(message)
        self.closed.set()
        self.requests.put(None)  # the gateway closed our input: stop and exit

    def send(self, message: dict[str, Any]) -> None:
        if self.closed.is_set():
            return
        try:
            self.writer.write(orjson.dumps(message) + b"\n")
            self.writer.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.closed.set()

    def stopped(self, rid: int) -> bool:
        return rid in self.cancelled or self.closed.is_set()


def _serve(channel: _Channel, model: LocalModel) -> None:
    while True:
        request = channel.requests.get()
        if request is None:
            return
        rid = int(request.get("id", 0))
        if rid in channel.cancelled:
            channel.cancelled.discard(rid)
            continue
        def cancelled(rid: int = rid) -> bool:
            return channel.stopped(rid)

        try:
            events = model.run(str(request.get("endpoint")), request.get("body") or {},
                               bool(request.get("stream")), cancelled)
            for kind, payload in events:
                if channel.stopped(rid):
                    break
                channel.send({"id": rid, kind: payload})
            channel.send({"id": rid, "end": True})
        except LocalRequestError as exc:
            channel.send({"id": rid, "error": {"status": 400, "message": exc.message,
                                               "param": exc.param, "code": exc.code}})
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            channel.send({"id": rid, "error": {"status": 500, "message":
                                               f"{type(exc).__name__}: {str(exc)[:300]}"}})
        finally:  # a cancel that raced the end of its request is dropped with it
            for done in [r for r in list(channel.cancelled) if r <= rid]:
                channel.cancelled.discard(done)


def main(argv: list[str] | None = None) -> int:
    """Load the model named by the settings JSON in argv[1], then serve stdin/stdout."""
    args = sys.argv[1:] if argv is None else argv
    # Ctrl-C in a terminal reaches the whole process group; the gateway decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the original stdout; anything native code prints goes to stderr.
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    channel = _Channel(sys.stdin.buffer, protocol)
    try:
        model = LocalModel(Settings(**orjson.loads(args[0])))
    except Exception as exc:
        channel.send({"failed": f"{type(exc).__name__}: {str(exc)[:500]}"})
        return 1
    channel.send({"ready": model.info()})
    channel.start()
    _serve(channel, model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
