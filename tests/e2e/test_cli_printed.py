"""Commands the CLI prints for the user to run, run as printed (what we print, we run), from
an empty folder outside the repository: `shipyard init`'s next steps, and the command it
names when the store already has an admin key. (`shipyard demo`'s printed commands are
tested with the demo.)"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from doc_blocks import Shell, clean_env

pytestmark = pytest.mark.slow


def _quoted_commands(output: str) -> list[str]:
    return re.findall(r"'(shipyard [^']+)'", output)


def test_init_prints_next_steps_that_work_as_printed(tmp_path: Path) -> None:
    port = str(free_port())
    # the one change: the port, through the documented SHIPYARD_SERVER_PORT override
    with Shell(tmp_path, env=clean_env(SHIPYARD_SERVER_PORT=port)) as shell:
        init = shell.run("shipyard init").stdout
        [secret] = re.findall(r"^(sk-sy-\S+)$", init, re.M)
        [next_line] = [line for line in init.splitlines() if line.startswith("Next:")]
        assert "export SHIPYARD_API_KEY" in next_line
        commands = _quoted_commands(next_line)
        assert commands == ["shipyard config check", "shipyard serve"], next_line
        shell.run(f"export SHIPYARD_API_KEY={secret}")  # the step the line names
        check = shell.run(commands[0])
        assert check.returncode == 0
        shell.run(f"{commands[1]} &")
        shell.wait_for(f"http://127.0.0.1:{port}/livez", 120, tmp_path / "shell-4.log")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                         headers={"Authorization": f"Bearer {secret}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            models = json.loads(answer.read())
        assert models["data"], models


def test_the_command_init_names_for_a_second_admin_key_works(tmp_path: Path) -> None:
    with Shell(tmp_path) as shell:
        shell.run("shipyard init")
        again = shell.run("shipyard init --force").stdout
        assert "already has an admin key" in again, again
        [command] = [c for c in _quoted_commands(again) if "keys create" in c]
        created = shell.run(command).stdout
        assert re.search(r"^sk-sy-\S+$", created, re.M), created
