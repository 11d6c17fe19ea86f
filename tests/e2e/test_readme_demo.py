"""README command 1 from a fresh clone, then the instructions it prints, executed verbatim.

The repository is `git clone`d (the committed tree: what a newcomer gets, not this checkout's
uncommitted files) into a temporary folder, the README's first command runs there exactly as
printed — a new venv, `pip install -e .` from PyPI, `shipyard demo` — and once the demo prints
its instructions, they run as printed from a folder outside the clone: the
`pip install openai` line (the base install has no SDK), the Python snippet through the
printed interpreter, and the curl line. The demo's port comes from `SHIPYARD_SERVER_PORT` (as
the README says), so the test never takes 8000; the sim takes 9100 or, when that is busy, a
free port (the demo says which).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.slow

README = REPO / "README.md"


def _command_1() -> str:
    block = re.search(r"```bash\n(.*?)```", README.read_text("utf-8"), re.S)
    assert block, "README.md has no bash block"
    commands = [line for line in block.group(1).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[0].endswith("shipyard demo"), commands
    return commands[0]


def _clean_env(**extra: str) -> dict[str, str]:
    """A newcomer's shell: nothing of this checkout or its venv on any path."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "SHIPYARD_API_KEY", "SHIPYARD_CONFIG", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(Path(os.environ.get("VIRTUAL_ENV", "/nonexistent")) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and p != venv_bin and not p.startswith(str(REPO)))
    env.update(extra)
    return env


def _block(text: str, start: str, end: str) -> str:
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = next(i for i, line in enumerate(lines) if i > first and line.startswith(end))
    return "\n".join(lines[first + 1:last]).strip() + "\n"


def test_readme_command_1_from_a_fresh_clone(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    git = shutil.which("git")
    assert git, "git is needed to clone the repository"
    clone, outside = tmp_path / "shipyard", tmp_path / "elsewhere"
    outside.mkdir()
    subprocess.run([git, "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    command, port = _command_1(), free_port()
    assert command == ("python3 -m venv .venv && .venv/bin/pip install -e . && "
                       ".venv/bin/shipyard demo")
    log = tmp_path / "demo.out"
    with log.open("wb") as out:
        demo = subprocess.Popen(["bash", "-c", command], cwd=clone, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=_clean_env(SHIPYARD_SERVER_PORT=str(port),
                                               PIP_DISABLE_PIP_VERSION_CHECK="1"))
    try:
        deadline = time.monotonic() + 900  # pip from PyPI: a minute or two, more when loaded
        text = ""
        while "Start the pieces yourself" not in text:
            text = log.read_text("utf-8", "replace")
            if demo.poll() is not None:
                raise AssertionError(f"command 1 exited ({demo.returncode}):\n{text[-5000:]}")
            assert time.monotonic() < deadline, f"no instructions yet:\n{text[-5000:]}"
            time.sleep(0.5)
        text = log.read_text("utf-8", "replace")
        assert f"Shipyard demo is ready on http://127.0.0.1:{port}" in text
        assert "SIMULATED" in text  # the base install has no local model, and says so
        script = _block(text, "Try it from another terminal", "Start the pieces")
        heredoc = re.search(r"^(\S+) - <<'EOF'$", script, re.M)
        assert heredoc, script
        interpreter = heredoc.group(1)  # the clone's venv, where shipyard was installed
        assert Path(interpreter).parent == clone / ".venv" / "bin", script
        assert f"{interpreter} -m pip install openai" in script, script
        done = subprocess.run(["bash", "-e", "-c", script], cwd=outside, capture_output=True,
                              text=True, timeout=600,
                              env=_clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        lines = done.stdout.strip().splitlines()
        curl = json.loads(next(line for line in lines if line.startswith('{"id"')))
        assert curl["object"] == "service.result"
        assert curl["output"]["citations"][0]["id"] == "gift-cards"
        assert lines[-1].endswith("[1]") and "never expire" in lines[-1]  # the snippet
        assert not (outside / ".shipyard").exists()  # the instructions wrote nothing here
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait(10)
    assert "Traceback" not in log.read_text("utf-8", "replace")
