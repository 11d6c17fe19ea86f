"""The real `shipyard` CLI, driven in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer

from shipyard import __version__
from shipyard.cli.main import app
from shipyard.store import TraceWriter, create_store_engine, migrate, new_trace_record

REPO = Path(__file__).resolve().parents[2]


def _command_tree() -> dict[tuple[str, ...], list[str]]:
    """Every command group of the real Typer app and its subcommands (so a new command is
    checked the moment it is registered)."""
    tree: dict[tuple[str, ...], list[str]] = {}

    def walk(group: Any, path: tuple[str, ...]) -> None:
        # Typer ships its own click; a group is anything with sub-`commands`.
        tree[path] = sorted(group.commands)
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, (*path, name))

    walk(typer.main.get_command(app), ())
    return tree


GROUPS = _command_tree()


def shipyard(*args: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    clean.update(NO_COLOR="1", TERM="dumb", COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "shipyard", *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=timeout)


def test_version(tmp_path: Path) -> None:
    result = shipyard("version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"shipyard {__version__}"


@pytest.mark.parametrize("group", list(GROUPS), ids=lambda g: " ".join(g) or "shipyard")
def test_help_lists_subcommands(group: tuple[str, ...], tmp_path: Path) -> None:
    result = shipyard(*group, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in GROUPS[group]:
        assert f" {command} " in result.stdout, f"{command} missing from help:\n{result.stdout}"


def test_every_command_is_in_the_cli_docs() -> None:
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for group, commands in GROUPS.items():
        for command in commands:
            if (*group, command) in GROUPS:
                continue  # a group: its subcommands are checked
            full = " ".join(["shipyard", *group, command])
            assert f"`{full}" in doc, f"docs/cli.md does not document '{full}'"


def test_init_writes_a_valid_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    created = shipyard("init", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "sk-sy-" in created.stdout  # the first admin key, printed once
    config = tmp_path / "shipyard.yaml"
    text = config.read_text()
    assert "{$env: SHIPYARD_API_KEY}" in text

    checked = shipyard("config", "check", "--no-store", cwd=tmp_path,
                       env={"SHIPYARD_API_KEY": "sk-e2e-" + "x" * 20})
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stdout

    no_key = shipyard("config", "check", "--no-store", cwd=tmp_path)
    assert no_key.returncode != 0
    assert "export SHIPYARD_API_KEY=" in no_key.stderr

    config.write_text("# mine\n")
    again = shipyard("init", cwd=tmp_path)
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert "--force" in again.stderr
    assert config.read_text() == "# mine\n"

    forced = shipyard("init", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert config.read_text() == text


@pytest.mark.parametrize(("text", "expected"), [
    ("server:\n  port: -1\n", ["'server.port' is -1", "greater than or equal to 1"]),
    ("server:\n  hots: x\n", ["'server.hots'", "did you mean 'host'"]),
    ("server:\n  port: [1\n", ["not valid YAML at line"]),
])
def test_config_check_rejects_bad_files(text: str, expected: list[str], tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    result = shipyard("config", "check", "--no-store", "--config", "bad.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "bad.yaml" in result.stderr
    for words in expected:
        assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_config_docs_prints_the_reference(tmp_path: Path) -> None:
    result = shipyard("config", "docs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, list[dict[str, object]]]:
    """A SQLite store holding three traces written by the real TraceWriter."""
    url = f"sqlite:///{tmp_path}/traces.db"
    engine = create_store_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    records = [
        new_trace_record(request_id="req-old", route="chat", model_alias="demo", status=200,
                         started_at=now - timedelta(minutes=3), total_ms=12.5,
                         total_tokens=30),
        new_trace_record(request_id="req-mid", route="chat", model_alias="demo", status=502,
                         started_at=now - timedelta(minutes=2), total_ms=40.0,
                         error_type="UpstreamUnavailable", error_message="upstream reset"),
        new_trace_record(request_id="req-new", route="service", service="classify",
                         status=200, started_at=now - timedelta(minutes=1), total_ms=3.0),
    ]
    writer = TraceWriter(engine, flush_interval_s=0.01)
    writer.start()
    for record in records:
        assert writer.submit(record)
    writer.stop()
    engine.dispose()
    return url, records


def test_traces_list_json(store: tuple[str, list[dict[str, object]]], tmp_path: Path) -> None:
    url, records = store
    result = shipyard("traces", "list", "--store-url", url, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["request_id"] for r in rows] == ["req-new", "req-mid", "req-old"]  # newest first
    assert rows[2]["id"] == records[0]["id"]
    assert rows[2]["total_tokens"] == 30

    errors = shipyard("traces", "list", "--store-url", url, "--json", "--errors", cwd=tmp_path)
    assert [json.loads(x)["request_id"] for x in errors.stdout.splitlines()] == ["req-mid"]


def test_traces_list_table(store: tuple[str, list[dict[str, object]]], tmp_path: Path) -> None:
    url, records = store
    result = shipyard("traces", "list", "--store-url", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for record in records:
        assert str(record["id"])[:12] in result.stdout
    assert "UpstreamUnavailable" in result.stdout


def test_traces_show(store: tuple[str, list[dict[str, object]]], tmp_path: Path) -> None:
    url, records = store
    by_id = shipyard("traces", "show", str(records[1]["id"]), "--store-url", url, cwd=tmp_path)
    assert by_id.returncode == 0, by_id.stderr
    trace = json.loads(by_id.stdout)
    assert trace["request_id"] == "req-mid"
    assert trace["error_message"] == "upstream reset"

    by_request = shipyard("traces", "show", "req-new", "--store-url", url, cwd=tmp_path)
    assert json.loads(by_request.stdout)["id"] == records[2]["id"]

    by_prefix = shipyard("traces", "show", str(records[0]["id"])[:12], "--store-url", url,
                         cwd=tmp_path)
    assert json.loads(by_prefix.stdout)["id"] == records[0]["id"]


def test_traces_show_unknown_id_fails_clearly(
        store: tuple[str, list[dict[str, object]]], tmp_path: Path) -> None:
    url, _ = store
    result = shipyard("traces", "show", "no-such-trace", "--store-url", url, cwd=tmp_path)
    assert result.returncode != 0
    assert "No trace has id or request id 'no-such-trace'" in result.stderr
    assert "shipyard traces list" in result.stderr
    assert result.stdout == ""


def test_traces_export_jsonl(store: tuple[str, list[dict[str, object]]], tmp_path: Path) -> None:
    url, _ = store
    result = shipyard("traces", "export", "--format", "jsonl", "--store-url", url,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["request_id"] for r in rows] == ["req-old", "req-mid", "req-new"]  # oldest first
    assert rows[0]["started_at"].endswith("Z")

    out = tmp_path / "export.jsonl"
    to_file = shipyard("traces", "export", "--store-url", url, "--service", "classify",
                       "-o", str(out), cwd=tmp_path)
    assert to_file.returncode == 0, to_file.stderr
    assert "Exported 1 traces" in to_file.stdout
    assert [json.loads(x)["request_id"] for x in out.read_text().splitlines()] == ["req-new"]


def test_traces_export_csv_fails_clearly(tmp_path: Path) -> None:
    result = shipyard("traces", "export", "--format", "csv", "--store-url",
                      f"sqlite:///{tmp_path}/t.db", cwd=tmp_path)
    assert result.returncode != 0
    assert "--format is 'csv'" in result.stderr
    assert "jsonl" in result.stderr


def test_traces_bad_since_fails_clearly(
        store: tuple[str, list[dict[str, object]]], tmp_path: Path) -> None:
    url, _ = store
    result = shipyard("traces", "list", "--store-url", url, "--since", "yesterday",
                      cwd=tmp_path)
    assert result.returncode != 0
    assert "--since is 'yesterday'" in result.stderr


@pytest.mark.parametrize(("flags", "expected"), [
    (["--error-rate", "500=abc"], "--error-rate is '500=abc'; write STATUS=RATE"),
    (["--error-rate", "418=0.5"], "status 418"),
    (["--error-rate", "500=0.7", "--error-rate", "503=0.7"], "add up to 1.4"),
    (["--latency", "soon"], "latency 'soon' is not understood"),
])
def test_sim_bad_fault_flags_fail_clearly(flags: list[str], expected: str,
                                          tmp_path: Path) -> None:
    result = shipyard("sim", "--port", "1", *flags, cwd=tmp_path, timeout=30)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_python_path_and_plugins_are_honoured_from_any_directory(tmp_path: Path) -> None:
    """`python_path` (relative to the config file) is what makes `module:function` import —
    no PYTHONPATH needed — for `config check` and `serve` alike; `plugins` run first."""
    project = tmp_path / "project"
    (project / "my_app").mkdir(parents=True)
    (project / "my_app" / "__init__.py").write_text("")
    (project / "my_app" / "svc.py").write_text("def echo(data):\n    return data\n")
    (project / "my_app" / "plugins.py").write_text(
        "from shipyard.guards import Guard, register\n\n"
        "class Quiet(Guard):\n    name = 'quiet'\n\nregister('quiet', Quiet)\n")
    (project / "shipyard.yaml").write_text(
        "python_path: [.]\nplugins: [my_app.plugins]\n"
        f"store: {{url: 'sqlite:///{tmp_path}/s.db'}}\n"
        "services:\n  echo:\n    function: my_app.svc:echo\n"
        "    guards: {input: [quiet]}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checked = shipyard("config", "check", "--config", str(project / "shipyard.yaml"),
                  cwd=elsewhere)
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stdout
def test_config_check_warns_about_an_inline_secret_and_strict_refuses_it(tmp_path: Path) -> None:
    (tmp_path / "inline.yaml").write_text(
        "store: {url: 'sqlite:///s.db'}\n"
        "auth: {api_keys: ['sk-inline-secret-1234', {$env: SHIPYARD_API_KEY}]}\n"
        "providers: {sim: {kind: sim}}\n"
        "models: {demo: {provider: sim, model: sim-chat}}\n")
    env = {"SHIPYARD_API_KEY": "sk-e2e-" + "x" * 20}
    checked = shipyard("config", "check", "--no-store", "--config", "inline.yaml",
                       cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "1 provider, 1 model, 0 services." in checked.stdout
    assert "key 'auth.api_keys[0]' holds a secret written inline" in checked.stderr
    assert "auth.api_keys[1]" not in checked.stderr  # referenced: fine
    assert "sk-inline-secret-1234" not in checked.stderr + checked.stdout
    strict = shipyard("config", "check", "--no-store", "--strict", "--config", "inline.yaml",
                      cwd=tmp_path, env=env)
    assert strict.returncode != 0
    assert "key 'auth.api_keys[0]' holds a secret written inline" in strict.stderr
    assert "--strict refuses inline secrets" in strict.stderr
    assert "sk-inline-secret-1234" not in strict.stderr + strict.stdout
