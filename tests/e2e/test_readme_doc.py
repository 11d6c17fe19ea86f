"""README.md's quick start, run as printed in one shell from a folder outside the repository
laid out like a checkout (examples/quickstart copied, .venv the venv running the tests). The
only change: ports 8000 and 9100 become free ports. (The install line, command 1, and
`shipyard demo` are tested by their own tests.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import free_port
from doc_blocks import REPO, Shell, take

pytestmark = pytest.mark.slow

SECTION = "## Quick start with the `openai` SDK"
START, SNIPPET, RUN_SNIPPET, INVOKE, KEYS, TRACES = take("README.md", SECTION)


def test_the_quick_start_runs_as_printed(tmp_path: Path) -> None:
    assert SNIPPET.lang == "python" and SNIPPET.marker == "<!-- file: quickstart.py -->"
    shutil.copytree(REPO / "examples" / "quickstart", tmp_path / "examples" / "quickstart")
    os.symlink(Path(sys.executable).parent.parent, tmp_path / ".venv")
    ports = {"8000": str(free_port()), "9100": str(free_port())}
    with Shell(tmp_path, ports) as shell:
        config = tmp_path / "examples" / "quickstart" / "shipyard.yaml"
        config.write_text(shell.local(config.read_text()))
        shell.run(START.text)
        shell.write("quickstart.py", SNIPPET.text)
        out = shell.run(RUN_SNIPPET.text).stdout.splitlines()
        assert "CompletionUsage(completion_tokens=" in "\n".join(out), out
        embedding = re.search(r"\[(-?[0-9.e-]+, ){3}-?[0-9.e-]+\]", out[-2])
        assert embedding, out
        request_id, overhead = out[-1].split()
        assert request_id and float(overhead) >= 0
        invoked = shell.run(INVOKE.text).stdout
        shown = json.loads(INVOKE.text.split("# ", 1)[1].replace("…", "x"))
        got = json.loads(invoked)
        assert got["output"] == shown["output"] and got["service"] == "triage", got
        created = shell.run(KEYS.text).stdout
        assert "sk-sy-" in created, created
        listed = shell.run(TRACES.text).stdout
        assert "demo" in listed and "triage" in listed, listed
        exported = [json.loads(line) for line in
                    (tmp_path / "traces.jsonl").read_text().splitlines()]
        assert len(exported) >= 4 and any(t.get("service") == "triage" for t in exported)
