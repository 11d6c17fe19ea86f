"""Every YAML block in the resilience and security docs is a valid config (what we print, we
run): the settings they show exist, with the types and values they show."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from shipyard.config import parse_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
ENV = {name: "sk-docs-" + "x" * 24 for name in (
    "SHIPYARD_API_KEY", "OPENAI_API_KEY", "TRACE_KEY", "TRACE_KEY_OLD")}


def _blocks(name: str) -> list[str]:
    text = (DOCS / name).read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


@pytest.mark.parametrize(("doc", "index", "block"), [
    (doc, i, block) for doc in ("resilience.md", "security.md")
    for i, block in enumerate(_blocks(doc))], ids=lambda v: v if isinstance(v, str | int)
    and len(str(v)) < 20 else "")
def test_the_yaml_blocks_of_the_docs_are_valid_configs(doc: str, index: int, block: str) -> None:
    text = textwrap.dedent(block)
    if "auth:" not in text:
        text += "auth: {disabled: true}\n"
    if "provider: sim" in text and "providers:" not in text:
        text += "providers: {sim: {kind: sim}}\n"
    parse_config(text, environ=ENV)
