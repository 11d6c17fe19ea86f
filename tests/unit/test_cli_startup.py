"""`shipyard --help`, `shipyard version` and `shipyard COMMAND --help` start fast: they load
typer, rich and the CLI modules, never the gateway, the store or a domain package (CLI modules
import their domains inside the command functions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Third-party packages that only running a command may load. (pydantic is not listed: typer
# itself loads it to convert arguments; the settings schema is kept out as a Shipyard module.)
HEAVY = ("sqlalchemy", "starlette", "httpx", "numpy", "torch", "aiohttp",
         "uvicorn", "yaml", "alembic", "jinja2", "cryptography", "sklearn", "spacy", "plotly",
         "openai", "anthropic", "redis", "psycopg", "asyncpg")
# The Shipyard modules `--help` may load: the CLI itself and the few leaf modules it names
# (the config package's lazy `__init__`, the environment reader, the platform tenant's name).
LIGHT = {"shipyard", "shipyard._version", "shipyard.__main__", "shipyard.errors",
         "shipyard.config", "shipyard.config.env", "shipyard.security",
         "shipyard.security.roles"}

ARGS = [
    ["--help"],
    ["version"],
    ["serve", "--help"],
    ["sim", "--help"],
    ["config", "check", "--help"],
    ["data", "run", "--help"],
    ["traces", "list", "--help"],
    ["loadtest", "--help"],
    ["redteam", "--help"],
    ["pii", "eval", "--help"],
    ["eval", "--help"],
    ["alerts", "--help"],
]


def _imported(args: list[str]) -> list[str]:
    """The modules `python -m shipyard ARGS` imported, read from `-X importtime`."""
    environ = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1", "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "shipyard", *args],
                          capture_output=True, text=True, env=environ, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shipyard" in done.stdout
    return [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
            if line.startswith("import time:") and "|" in line
            and not line.rstrip().endswith("imported package")]


@pytest.mark.parametrize("args", ARGS, ids=" ".join)
def test_help_and_version_import_no_domain(args: list[str]) -> None:
    modules = _imported(args)
    assert "typer" in modules  # the parse really ran
    heavy = sorted({m for m in modules if m.split(".")[0] in HEAVY})
    domain = sorted(m for m in modules if m.split(".")[0] == "shipyard"
                    and m not in LIGHT and not m.startswith("shipyard.cli"))
    assert not heavy and not domain, (
        f"'shipyard {' '.join(args)}' imported {heavy + domain}; CLI modules must import "
        "domains inside their command functions")


# Every command's --help in one process: a command added later cannot bring a domain back.
_EVERY_HELP = """
import sys
import typer.main
from shipyard.cli.main import app

def walk(command, path):
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # a group
        yield from walk(sub, [*path, name])

root = typer.main.get_command(app)
paths = list(walk(root, []))
for path in paths:
    try:
        root.main([*path, "--help"], prog_name="shipyard", standalone_mode=False)
    except SystemExit:
        pass
print(len(paths))
print(" ".join(sorted(sys.modules)))
"""


def test_every_command_help_imports_no_domain() -> None:
    environ = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-c", _EVERY_HELP], capture_output=True, text=True,
                          env=environ, timeout=120)
    assert done.returncode == 0, done.stderr
    *_, count, modules = done.stdout.splitlines()
    assert int(count) > 60  # every group and command was rendered
    loaded = modules.split()
    heavy = sorted({m for m in loaded if m.split(".")[0] in HEAVY})
    domain = sorted(m for m in loaded if m.split(".")[0] == "shipyard" and m not in LIGHT
                    and not m.startswith("shipyard.cli"))
    assert not heavy and not domain, f"some command's --help imported {heavy + domain}"


def test_status_lists_written_out_in_the_cli_match_the_domains() -> None:
    from shipyard.cli import escalations, webhooks
    from shipyard.escalation import STATUSES as TICKET_STATUSES
    from shipyard.work import STATUSES as WORK_STATUSES

    assert escalations.STATUSES == TICKET_STATUSES
    assert webhooks.STATUSES == WORK_STATUSES
