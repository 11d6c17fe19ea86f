"""Shared helpers for the benchmarks: processes, ports, /proc memory, wrk, machine facts, docs."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DOCS_FILE = REPO_DIR / "docs" / "benchmarks.md"
RESULTS_DIR = BENCH_DIR / "results"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Ports and processes


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A server started in its own process group, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        # Children (uvicorn workers, pip, ...) may outlive the leader: sweep the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class ProcessGroup:
    """Owns every server of a run; `stop_all()` runs from `finally` and from signal handlers."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[Server] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Server:
        log_path = self.log_dir / f"{name}.log"
        handle = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # own process group: killpg reaches its children
            )
        finally:
            handle.close()
        server = Server(name, proc, log_path)
        self.servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        while self.servers:
            self.servers.pop().stop()


@contextlib.contextmanager
def managed_processes(log_dir: Path) -> Iterator[ProcessGroup]:
    """A ProcessGroup whose servers die on exit, on Ctrl-C and on SIGTERM."""
    group = ProcessGroup(log_dir)

    def _on_signal(signum: int, _frame: object) -> None:
        group.stop_all()
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield group
    finally:
        group.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# HTTP


@dataclass
class HttpResult:
    status: int
    body: bytes
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResult:
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}))
    if body is not None:
        request.method = "POST"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResult(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, exc.read())
    except (OSError, urllib.error.URLError) as exc:
        return HttpResult(0, b"", error=f"{type(exc).__name__}: {exc}")


def wait_for_port(server: Server, port: int, timeout: float) -> str | None:
    """Wait until something accepts on 127.0.0.1:port; returns an error text on failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            return f"{server.name} exited with code {server.proc.returncode}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return None
        time.sleep(0.1)
    return f"{server.name} did not listen on port {port} within {timeout:.0f} s"


# --------------------------------------------------------------------------------------------
# Memory of a process tree, from /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RssSampler:
    """Samples the summed VmRSS of a process tree in a thread and keeps the peak.

    Also keeps each process's VmHWM (its own kernel-measured peak) as a cross-check.
    """

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self.first_kib: int | None = None
        self.processes = 0
        self._hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        tree = process_tree(self.pid)
        total = 0
        for pid in tree:
            total += _status_kib(pid, "VmRSS:")
            hwm = _status_kib(pid, "VmHWM:")
            if hwm:
                self._hwm[pid] = max(self._hwm.get(pid, 0), hwm)
        self.processes = max(self.processes, len(tree))
        self.peak_kib = max(self.peak_kib, total)
        if self.first_kib is None:
            self.first_kib = total

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def first_mib(self) -> float:
        return (self.first_kib or 0) / 1024

    @property
    def hwm_sum_mib(self) -> float:
        return sum(self._hwm.values()) / 1024


# --------------------------------------------------------------------------------------------
# wrk

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT {{\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, "
    .. "\\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, \\"mean_us\\": %.1f, "
    .. "\\"max_us\\": %d, \\"connect_errors\\": %d, \\"read_errors\\": %d, "
    .. "\\"write_errors\\": %d, \\"timeouts\\": %d, \\"non_2xx\\": %d}}\\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max, e.connect, e.read, e.write, e.timeout, e.status))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_wrk_script(path: Path, body: bytes, api_key: str | None) -> Path:
    auth = f'wrk.headers["Authorization"] = {_lua_string("Bearer " + api_key)}' if api_key else ""
    path.write_text(_WRK_SCRIPT.format(body=_lua_string(body.decode()), auth=auth))
    return path


@dataclass
class WrkResult:
    connections: int
    threads: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    foreign_cpu: float = 0.0  # share of the machine used by other processes during the run
    attempts: int = 1  # measured runs made to get one that other work did not skew

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def find_wrk() -> str | None:
    return shutil.which("wrk")


def run_wrk(wrk: str, url: str, script: Path, *, connections: int, duration_s: float,
            timeout_s: float = 10.0) -> WrkResult:
    threads = 1 if connections < 2 else min(2, connections)
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    match = re.search(r"^WRK_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(match.group(1))
    duration = raw["duration_us"] / 1e6
    errors = {
        key: int(raw[key])
        for key in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")
        if raw[key]
    }
    return WrkResult(
        connections=connections,
        threads=threads,
        requests=raw["requests"],
        duration_s=round(duration, 3),
        rps=round(raw["requests"] / duration, 1) if duration else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 4),
        max_ms=raw["max_us"] / 1000,
        errors=errors,
    )


# --------------------------------------------------------------------------------------------
# Machine facts and versions


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = _meminfo_kib("MemTotal:")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def load_average() -> float:
    """The 1-minute load average: other work on the machine skews every number."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])
    return 0.0


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values), idle


def cpu_busy(interval_s: float = 1.0) -> float:
    """Fraction of all cores busy over `interval_s` (0..1), from /proc/stat."""
    total0, idle0 = _cpu_times()
    time.sleep(interval_s)
    total1, idle1 = _cpu_times()
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


def _proc_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its children alive now."""
    ticks = sum(_proc_ticks(each) for each in process_tree(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


class ForeignCpu:
    """Measures how much of the machine's CPU went to processes outside the benchmark.

    Ours are the trees under `roots`, this process and its waited-for children (wrk).
    `foreign` is the share of all cores' time used by anything else (0..1).
    """

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self.foreign = 0.0
        self._start: tuple[int, int, dict[int, int], float] | None = None

    def _ours(self) -> dict[int, int]:
        pids = {os.getpid()}
        for root in self.roots:
            pids.update(process_tree(root))
        return {pid: _proc_ticks(pid) for pid in pids}

    @staticmethod
    def _children_ticks() -> float:
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _machine() -> tuple[int, int]:
        """(all ticks, ticks in processes: user + nice + system). Interrupt time (loopback
        networking runs in softirq) and steal are left out: no process is charged for them."""
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values[:8]), values[0] + values[1] + values[2]

    def __enter__(self) -> ForeignCpu:
        total, busy = self._machine()
        self._start = (total, busy, self._ours(), self._children_ticks())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None
        total0, busy0, ours0, children0 = self._start
        total1, busy1 = self._machine()
        ours1 = self._ours()
        ours = sum(ticks - ours0.get(pid, 0) for pid, ticks in ours1.items())
        wrk = self._children_ticks() - children0
        elapsed = total1 - total0
        self.foreign = max(0.0, (busy1 - busy0 - ours - wrk) / elapsed) if elapsed > 0 else 0.0


def wait_for_quiet(max_wait_s: float = 60.0, threshold: float = 0.15) -> float:
    """Wait until the machine is mostly idle (other work skews every number).

    Returns the last busy fraction seen; logs a warning when the machine never got quiet.
    """
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        log(f"machine is {busy:.0%} busy with other work; waiting for it to settle")
        busy = cpu_busy(2.0)
    if busy > threshold:
        log(f"WARNING: machine still {busy:.0%} busy after {max_wait_s:.0f} s; numbers will be off")
    return busy


def _meminfo_kib(key: str) -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """The repository's commit, with `+dirty` when src/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------------------------
# Output files

_DOCS_HEADER = """\
# Benchmarks

Numbers measured by the scripts in `bench/` (see `bench/README.md`). Each section is rewritten
by its script; edit the text outside the markers freely.
"""


def paragraph(*parts: str, width: int = 100) -> str:
    """Markdown paragraph wrapped at `width` columns, never inside a `code span`."""
    text = " ".join(parts)
    glued = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\x00"), text)
    wrapped = textwrap.fill(glued, width=width, break_long_words=False, break_on_hyphens=False)
    return wrapped.replace("\x00", " ")


def write_docs_section(name: str, markdown: str, path: Path = DOCS_FILE) -> None:
    """Replace the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else _DOCS_HEADER
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, text)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def command_line() -> str:
    """How this run was started, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO_DIR) if script.is_relative_to(REPO_DIR) else script
    return " ".join([".venv/bin/python", str(shown), *sys.argv[1:]])
