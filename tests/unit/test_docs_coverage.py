# ruff: noqa: E501  (the allowlist names blocks by their full first line)
"""What we print, we run: every fenced block of README.md and docs/*.md that a reader runs
(bash, sh, console, python) or loads as config (yaml) is taken by a doc test, or is in the
allowlist below with the reason it cannot run here.

A doc test takes its blocks with `doc_blocks.take(...)` at module level; this test imports every
test module that uses doc_blocks and collects what they took. A new block that nobody runs
fails here, naming it by (file, heading, first line); so does an allowlist entry that no longer
names a block, or that names one a test now runs (tighten the list).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import doc_blocks
from doc_blocks import RUNNABLE, SHOWN, all_blocks

TESTS = Path(__file__).resolve().parents[1]

# Blocks no test runs, each with the reason. Keys are Block.id: "file | heading | first line".
# "BACKLOG:" entries could run here but no test runs them yet: take them in a doc test.
NOT_RUN: dict[str, str] = {
    'README.md | # Shipyard | # 1. Install and run the main job: the reference support assistant behind the gateway, on the':
        'owned by a parallel change (newcomer: README command 1 / shipyard demo); it installs from scratch into a new venv',
    "docs/dashboard.md | # Dashboard | pip install 'shipyard[ui]'          # jinja2 + plotly":
        "installs from the package index (pip install 'shipyard[ui]' would fetch a published shipyard, not this checkout)",
    'docs/deployment.md | ## The container image | docker build --build-arg EXTRAS=postgres,redis,otel -t shipyard:local .':
        'needs a Docker engine (none on this machine); the Dockerfile is linted by hadolint in tests/e2e/test_deploy.py',
    'docs/deployment.md | ## Kubernetes | kubectl apply -k deploy/kubernetes':
        'needs a Kubernetes cluster; the manifests are validated offline in tests/e2e/test_deploy.py',
    'docs/guards.md | ## Red team | shipyard redteam --url http://127.0.0.1:8000/v1 --model support --key-env SHIPYARD_API_KEY \\':
        'BACKLOG: sends the 5,111-item outside corpus through the worked example\'s embedding guards: minutes of CPU per run on this shared machine (the command and its thresholds are run on the holdout split in tests/integration/test_redteam.py)',
    "docs/observability.md | ### OTLP export | pip install 'shipyard[otel]'":
        "installs from the package index (pip install 'shipyard[otel]' would fetch a published shipyard, not this checkout)",
    'docs/oidc.md | ## Sending the token | curl https://shipyard.example/v1/chat/completions \\':
        'needs a real identity provider and a deployed gateway at shipyard.example',
    'docs/oidc.md | ## Sending the token | from openai import OpenAI':
        "needs a real identity provider's token and a deployed gateway at shipyard.example",
    'docs/oidc.md | ## Sending the token | curl -s https://<keycloak-host>/realms/<realm>/protocol/openid-connect/token \\':
        "needs a real Keycloak server (the placeholders <keycloak-host>, <realm> are the reader's)",
    "docs/privacy.md | ## Names (NER backend) | pip install 'shipyard[ner]'                 # spaCy":
        'installs from the package index and downloads a spaCy model (no network here)',
    'docs/privacy.md | ## Names (NER backend) | from shipyard.privacy import PIIEngine, default_recognizers':
        'needs spaCy pipelines (en_core_web_sm, /models/my-ner) this machine does not have (the NER backend is tested in tests/unit/test_privacy_ner.py)',
}


def _import_doc_tests() -> list[str]:
    names = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue
        if "doc_blocks" not in path.read_text(encoding="utf-8"):
            continue
        folder = str(path.parent)
        if folder not in sys.path:  # as pytest's prepend import mode does
            sys.path.insert(0, folder)
        importlib.import_module(path.stem)
        names.append(path.stem)
    return names


def test_every_runnable_doc_block_is_run_by_a_test_or_says_why_not() -> None:
    modules = _import_doc_tests()
    assert len(modules) >= 5, modules
    blocks = all_blocks()
    ids = {b.id for b in blocks}
    untagged = [f"{b.doc}:{b.line} {b.id}" for b in blocks if not b.lang]
    assert not untagged, ("fenced blocks without a language; tag output as ```text (or the "
                          "language of a block a reader runs):\n" + "\n".join(untagged))
    unknown = [f"{b.doc}:{b.line} [{b.lang}] {b.id}" for b in blocks
               if b.lang not in RUNNABLE | SHOWN]
    assert not unknown, "blocks of a language this test does not know:\n" + "\n".join(unknown)
    uncovered = [f"{b.doc}:{b.line} [{b.lang}] {b.id}" for b in blocks
                 if b.lang in RUNNABLE and b.id not in doc_blocks.TAKEN and b.id not in NOT_RUN]
    assert not uncovered, ("blocks no test runs (take them in a doc test with "
                           "doc_blocks.take(...), or add them to NOT_RUN with the reason):\n"
                           + "\n".join(uncovered))
    stale = [key for key in NOT_RUN if key not in ids]
    assert not stale, "NOT_RUN names blocks that no longer exist:\n" + "\n".join(stale)
    now_run = [key for key in NOT_RUN if key in doc_blocks.TAKEN]
    assert not now_run, ("NOT_RUN names blocks a test runs now; remove them:\n"
                         + "\n".join(f"{k} (by {sorted(doc_blocks.TAKEN[k])})" for k in now_run))


def test_every_not_run_entry_says_why() -> None:
    for key, reason in NOT_RUN.items():
        assert len(reason.split()) >= 4, f"{key}: say why it cannot run here"


def test_block_ids_are_unique() -> None:
    blocks = all_blocks()
    assert len({b.id for b in blocks}) == len(blocks)
