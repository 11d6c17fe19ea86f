"""Every YAML block of README.md and docs/*.md is a valid config as printed (what we print, we
run): a gateway config loads with `parse_config`, a data pipeline with `parse_pipeline`. The
only things supplied are what the doc tells the reader to supply: the environment variables
its `{$env: NAME}` references name, and the secret files its `{$file: path}` references name
(written to a temporary folder). Fragments are not completed here: a block that is not a whole
config is made whole in the doc."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from doc_blocks import DOCS, Block, parse, take
from shipyard.config import parse_config
from shipyard.data.config import parse_pipeline

YAML = [b for doc in DOCS for b in parse(doc) if b.lang == "yaml"]


def _is_pipeline(block: Block) -> bool:
    return block.doc == "docs/data.md" or (block.doc == "docs/ray.md"
                                           and block.text.startswith("name:"))


for _block in YAML:  # registered block by block: each is loaded by the test below
    take(_block.doc, lang="yaml", containing=_block.text)

# What a reader sets, by the variable's name: URLs where the doc's comments show a URL.
URLS = {"SHIPYARD_STORE_URL": "postgresql+psycopg://user@db:5432/shipyard",
        "SHIPYARD_REDIS_URL": "redis://redis:6379/0"}


def _environ(text: str) -> dict[str, str]:
    names = re.findall(r"\$env:\s*([A-Za-z_][A-Za-z0-9_]*)", text)
    env = {}
    for name in names:
        if name in URLS:
            env[name] = URLS[name]
        elif name.endswith("_URL"):
            env[name] = "https://hooks.example.com/" + name.lower()
        elif name.endswith("WEBHOOK_SECRET"):
            env[name] = "whsec_" + "A" * 43 + "="
        else:
            env[name] = "sk-docs-" + "x" * 32
    return env


def _with_secret_files(text: str, folder: Path) -> str:
    for path in re.findall(r"\$file:\s*([^\s}]+)", text):
        file = folder / Path(path).name
        file.write_text("sk-docs-" + "f" * 32)
        text = text.replace(path, str(file))
    return text


def _is_addition(block: Block) -> bool:
    """A block the doc says is "added to the configuration above": loaded together with that
    configuration by its own doc test (integration.md's S3 drop: tests/e2e/test_connectors_doc)."""
    return block.doc == "docs/integration.md" and "bucket-drops:" in block.text


@pytest.mark.parametrize("block", [b for b in YAML if not _is_pipeline(b) and not _is_addition(b)],
                         ids=lambda b: f"{b.doc}:{b.line}")
def test_every_config_block_of_the_docs_loads_as_printed(block: Block, tmp_path: Path) -> None:
    text = _with_secret_files(block.text, tmp_path)
    config = parse_config(text, environ=_environ(text))
    assert config is not None


def test_the_pipeline_blocks_of_data_md_load() -> None:
    """The worked example is examples/data/pipeline.yaml (less its header comment); the
    reference fragments are top-level keys of a pipeline: put into the worked example, it
    still loads."""
    example = Path(__file__).resolve().parents[2] / "examples" / "data"
    blocks = [b for b in YAML if _is_pipeline(b) and b.doc == "docs/data.md"]
    whole = [b for b in blocks if b.text.startswith("name:")]
    assert len(whole) == 1 and whole[0].text in (example / "pipeline.yaml").read_text()
    parse_pipeline(whole[0].text, base_dir=example)
    base = yaml.safe_load(whole[0].text)
    for block in blocks:
        fragment = yaml.safe_load(block.text)
        assert isinstance(fragment, dict), block.id
        merged = {**base, **{k: v if not isinstance(v, dict) or not isinstance(base.get(k), dict)
                             else {**base[k], **v} for k, v in fragment.items()}}
        parse_pipeline(yaml.safe_dump(merged), base_dir=example)


def test_the_pipeline_of_ray_md_loads(tmp_path: Path) -> None:
    """docs/ray.md's pipeline is a whole one (run as printed by tests/e2e/test_ray_doc.py)."""
    (block,) = [b for b in YAML if _is_pipeline(b) and b.doc == "docs/ray.md"]
    (tmp_path / "signups.csv").write_text("id,age,notes\n1,30,hi\n")
    parse_pipeline(block.text, base_dir=tmp_path)
