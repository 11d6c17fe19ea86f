"""Admin commands on a store that cannot be opened: one sentence naming the store and the
fix, exit status 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, free_port

COMMANDS = [["tenants", "list"], ["keys", "list"], ["traces", "list"], ["audit", "verify"],
            ["usage"]]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", *argv], cwd=cwd,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_unreachable_postgres(command: list[str], tmp_path: Path) -> None:
    url = f"postgresql+psycopg://shipyard:s3cret@127.0.0.1:{free_port()}/shipyard"
    done = _run([*command, "--store-url", url], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot be opened" in done.stderr and "Connection refused" in done.stderr
    assert "s3cret" not in done.stderr and "127.0.0.1" in done.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_sqlite_that_cannot_be_created_or_was_never_set_up(command: list[str],
                                                           tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    done = _run([*command, "--store-url", f"sqlite:///{tmp_path}/file/store.db"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot be opened" in done.stderr
    # A new SQLite file: commands that set the store up (tenants, keys, audit) create its
    # tables; the read-only ones say how to.
    done = _run([*command, "--store-url", f"sqlite:///{tmp_path}/empty.db"], tmp_path)
    assert "Traceback" not in done.stderr
    if command[0] in ("traces", "usage"):
        assert done.returncode == 1
        assert "has no Shipyard tables yet" in done.stderr and "shipyard serve" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
