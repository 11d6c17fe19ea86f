"""The fenced code blocks of README.md and docs/*.md, and which tests run them.

A doc test takes the blocks it runs with `take(...)` at module level (so importing the test
module registers them); tests/unit/test_docs_coverage.py imports every test module that uses
this helper and fails for a runnable block that no test took and that is not in its commented
allowlist. A block is named by (file, heading, first line): `Block.id`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")))
# Blocks of these languages are instructions a reader runs (or config a reader loads); the
# others (text, json, html) show output and are not run. A block without a language fails
# the coverage test: say what it is.
RUNNABLE = frozenset({"bash", "sh", "shell", "console", "python", "yaml", "yml"})
SHOWN = frozenset({"text", "json", "html"})

# The language is the info string's first word ("```python connectors": python).
_FENCE = re.compile(r"^(\s*)```(\S*)(?:\s+\S.*)?\s*$")


@dataclass(frozen=True)
class Block:
    doc: str  # "README.md" or "docs/name.md"
    line: int  # 1-based line of the opening fence
    lang: str
    headings: tuple[str, ...]  # the enclosing headings, outermost first ("## Quick start")
    text: str  # the block's content, dedented to its fence
    marker: str  # the `<!-- ... -->` comment on the line before the fence, if any
    ordinal: int = 0  # 1, 2, ... when blocks share file, heading and first line

    @property
    def heading(self) -> str:
        return self.headings[-1] if self.headings else ""

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0].strip() if self.text.strip() else ""

    @property
    def id(self) -> str:
        base = f"{self.doc} | {self.heading} | {self.first_line}"
        return f"{base} #{self.ordinal}" if self.ordinal else base


def parse(doc: str) -> list[Block]:
    """Every fenced block of one doc (path relative to the repository)."""
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    stack: list[str] = []
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _FENCE.match(line)
        if match and not fenced:
            indent, lang = match.group(1), match.group(2)
            j = i + 1
            while j < len(lines) and not re.match(rf"^{indent}```\s*$", lines[j]):
                j += 1
            body = [x[len(indent):] if x.startswith(indent) else x.lstrip()
                    for x in lines[i + 1:j]]
            before = lines[i - 1].strip() if i else ""
            marker = before if before.startswith("<!--") else ""
            found.append(Block(doc, i + 1, lang, tuple(stack), "\n".join(body) + "\n", marker))
            i = j + 1
            continue
        heading = re.match(r"^(#+) ", line)
        if heading:
            level = len(heading.group(1))
            stack = [h for h in stack if len(h.split(" ", 1)[0]) < level] + [line.strip()]
        i += 1
    counts: dict[tuple[str, str], int] = {}
    for block in found:
        key = (block.heading, block.first_line)
        counts[key] = counts.get(key, 0) + 1
    out, running = [], {}
    for block in found:
        key = (block.heading, block.first_line)
        if counts[key] > 1:
            running[key] = running.get(key, 0) + 1
            block = Block(block.doc, block.line, block.lang, block.headings, block.text,
                          block.marker, running[key])
        out.append(block)
    return out


def all_blocks() -> list[Block]:
    return [block for doc in DOCS for block in parse(doc)]


TAKEN: dict[str, set[str]] = {}  # block id -> the test modules that took it


def take(doc: str, section: str | None = None, lang: str | None = None, *,
         containing: str | None = None, marker: str | None = None) -> list[Block]:
    """The blocks of `doc` (inside the heading `section`, which includes its subsections;
    of language `lang`; whose text contains `containing`; after the comment `marker`),
    registered as run by the calling test module. Fails when nothing matches, so a renamed
    section cannot silently drop a doc test."""
    chosen = [b for b in parse(doc)
              if (section is None or any(h.startswith(section) for h in b.headings))
              and (lang is None or b.lang == lang)
              and (containing is None or containing in b.text)
              and (marker is None or marker in b.marker)]
    if not chosen:
        raise LookupError(f"no block in {doc} matches section={section!r} lang={lang!r} "
                          f"containing={containing!r} marker={marker!r}")
    caller = sys._getframe(1).f_globals.get("__name__", "?")
    for block in chosen:
        TAKEN.setdefault(block.id, set()).add(caller)
    return chosen


def texts(blocks: list[Block]) -> list[str]:
    return [b.text for b in blocks]


# --- running what a block prints, from a folder outside the repository ---

def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a reader's shell: the venv's bin first on PATH, none of the test
    run's SHIPYARD_/OPENAI_ settings, this checkout's sources importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "OPENAI_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1", TERM="dumb",
               COLUMNS="200", PYTHONPATH=str(REPO / "src"), **extra)
    return env


def run_bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 300,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{script}\n--- stdout ---\n{done.stdout}\n" \
                                     f"--- stderr ---\n{done.stderr}"
    return done


def run_python(code: str, cwd: Path, env: dict[str, str], name: str = "snippet.py",
               timeout: float = 300) -> str:
    (cwd / name).write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, name], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{code}\n--- stdout ---\n{done.stdout}\n" \
                                 f"--- stderr ---\n{done.stderr}"
    return done.stdout


def start_background(command: str, cwd: Path, env: dict[str, str],
                     log: str = "background.log") -> subprocess.Popen[bytes]:
    with (cwd / log).open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_background(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Shell:
    """A reader's terminal: the blocks of a doc run one after the other in `folder`, with what
    one block exports seen by the next. A command ending in `&` keeps running in the
    background (until `close`), and the next block waits until the `--port N` it names answers
    /livez. `ports` maps a port the doc prints to a free one (the only change made to the
    text), so a test never collides with a server already running on the machine."""

    def __init__(self, folder: Path, ports: dict[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.folder, self.ports = folder, dict(ports or {})
        self.env = env if env is not None else clean_env()
        self.groups: list[int] = []
        self.state = folder / ".shell-state.sh"  # a new terminal: nothing exported, no cd
        self.state.unlink(missing_ok=True)
        self.logs = 0

    def local(self, text: str) -> str:
        for old, new in self.ports.items():
            text = re.sub(rf"(?<![0-9]){old}(?![0-9])", new, text)
        return text

    def write(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.local(text), encoding="utf-8")
        return path

    def run(self, script: str, timeout: float = 300, check: bool = True,
            wait_s: float = 120) -> subprocess.CompletedProcess[str]:
        script = self.local(script)
        self.logs += 1
        log = self.folder / f"shell-{self.logs}.log"
        wrapped = (f"set -euo pipefail\n[ -f {self.state} ] && source {self.state}\n"
                   f"{script}\nexport -p > {self.state}\n"
                   f'echo cd "$(printf %q "$PWD")" >> {self.state}\n')
        out_file = self.folder / f"shell-{self.logs}.out"
        with log.open("w") as err, out_file.open("w") as out:  # background children keep these
            proc = subprocess.Popen(["bash", "-c", wrapped], cwd=self.folder, env=self.env,
                                    stdout=out, stderr=err, start_new_session=True)
        self.groups.append(proc.pid)
        background = [line for line in script.splitlines()
                      if line.split("#", 1)[0].rstrip().endswith("&")]
        proc.wait(timeout)
        done = subprocess.CompletedProcess(proc.args, proc.returncode,
                                           out_file.read_text(errors="replace"),
                                           log.read_text(errors="replace"))
        if check:
            assert done.returncode == 0, (f"{script}\n--- stdout ---\n{done.stdout}\n"
                                          f"--- stderr ---\n{done.stderr}")
        for line in background:
            port = re.search(r"--port (\d+)", line)
            if port:
                self.wait_for(f"http://127.0.0.1:{port.group(1)}/livez", wait_s, log)
        return done

    def python(self, code: str, name: str = "snippet.py", timeout: float = 300) -> str:
        self.write(name, code)
        return self.run(f"python {name}", timeout=timeout).stdout

    def wait_for(self, url: str, timeout: float, log: Path | None = None) -> None:
        import time
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.2)
        output = log.read_text(errors="replace") if log else ""
        raise AssertionError(f"{url} did not answer within {timeout}s\n{output}")

    def close(self) -> None:
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                continue
        import time

        time.sleep(0.5)
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
