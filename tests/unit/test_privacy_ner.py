"""The optional NER backend: a real spaCy pipeline built and saved here (nothing downloaded)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shipyard.errors import ConfigError
from shipyard.privacy import PIIEngine, SpacyRecognizer, default_recognizers, ner_recognizer
from shipyard.privacy import ner as ner_module

spacy = pytest.importorskip("spacy")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spaCy pipeline on disk, as a user's trained one would be: rules stand in for a model."""
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [
            {"label": "PERSON", "pattern": [{"LOWER": "ada"}, {"LOWER": "lovelace"}]},
            {"label": "GPE", "pattern": "London"},
            {"label": "ORG", "pattern": [{"LOWER": "acme"}, {"LOWER": "corp"}]},
            {"label": "DATE", "pattern": "Monday"},
        ]
    )
    path = tmp_path_factory.mktemp("ner") / "pipeline"
    nlp.to_disk(path)
    return path


def test_names_found_by_a_configured_pipeline(pipeline_dir: Path) -> None:
    recognizer = ner_recognizer(str(pipeline_dir))
    assert isinstance(recognizer, SpacyRecognizer)
    text = "On Monday Ada Lovelace moved to London to join Acme Corp, mail ada@example.com"
    engine = PIIEngine(default_recognizers(ner=str(pipeline_dir)))
    assert [(f.entity, f.text) for f in engine.analyze(text)] == [
        ("PERSON", "Ada Lovelace"),
        ("LOCATION", "London"),
        ("ORGANIZATION", "Acme Corp"),
        ("EMAIL", "ada@example.com"),
    ]
    out = engine.anonymize(text, engine.analyze(text))
    assert out == (
        "On Monday <PERSON_1> moved to <LOCATION_1> to join <ORGANIZATION_1>, mail <EMAIL_1>"
    )
    assert recognizer.find("") == []


def test_entities_limit_and_engine_filter(pipeline_dir: Path) -> None:
    only_people = ner_recognizer(str(pipeline_dir), entities=["PERSON"])
    assert only_people is not None
    assert [f.entity for f in only_people.find("Ada Lovelace in London")] == ["PERSON"]
    with pytest.raises(ConfigError, match="not supported"):
        ner_recognizer(str(pipeline_dir), entities=["DATE"])


def test_missing_named_model_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="never downloads") as info:
        ner_recognizer("en_core_web_definitely_missing")
    assert "en_core_web_definitely_missing" in info.value.message


def test_auto_without_a_pipeline_is_skipped_with_a_notice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ner_module, "AUTO_MODELS", ("en_core_web_definitely_missing",))
    with caplog.at_level(logging.INFO, logger="shipyard.privacy.ner"):
        assert ner_recognizer("auto") is None
    assert "skipped" in caplog.text
    assert len(default_recognizers(ner="auto")) == len(default_recognizers())


def test_off_values() -> None:
    for value in (None, "", "off", "none"):
        assert ner_recognizer(value) is None


def test_spacy_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ner_module, "_spacy", lambda: None)
    with pytest.raises(ConfigError, match=r"shipyard\[ner\]"):
        ner_recognizer("en_core_web_sm")
    assert ner_recognizer("auto") is None
