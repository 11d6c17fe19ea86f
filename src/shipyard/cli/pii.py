"""`shipyard pii eval|scan`: measure the PII engine's accuracy; find PII in a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.table import Table

from shipyard.cli.common import console, fail
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.privacy import PIIEngine
    from shipyard.privacy.corpus import Sample
    from shipyard.privacy.evaluate import Match

app = typer.Typer(help="Find PII and measure how well the PII engine finds it.",
                  no_args_is_help=True)

NerOpt = Annotated[str | None, typer.Option(
    "--ner", help="NER backend for PERSON/LOCATION/ORGANIZATION: 'auto' or an installed spaCy "
    "pipeline (package name or folder). Never downloaded. Default: off.")]
EntitiesOpt = Annotated[list[str] | None, typer.Option(
    "--entity", "-e", help="Only this entity type (repeatable), e.g. -e EMAIL -e PHONE.")]


def _engine(ner: str | None, entities: list[str] | None, min_score: float) -> PIIEngine:
    from shipyard.privacy import PIIEngine, default_recognizers

    try:
        return PIIEngine(default_recognizers(ner=ner), entities=entities or None,
                         min_score=min_score)
    except ShipyardError as exc:
        raise fail(exc) from None
    except ValueError as exc:
        raise fail(str(exc)) from None


def _producible(engine: PIIEngine) -> set[str]:
    """Entity types `engine` can report (a NER backend reports several)."""
    from shipyard.privacy.ner import SpacyRecognizer

    out: set[str] = set()
    for r in engine.recognizers:
        out |= set(r.entities) if isinstance(r, SpacyRecognizer) else {r.entity}
    return out


@app.command("eval")
def eval_(
    n: Annotated[int, typer.Option("--n", help="Generated samples (about a third hold only "
                                   "near-misses).")] = 3000,
    seed: Annotated[int, typer.Option(help="Corpus seed: the same seed, the same corpus.")] = 7,
    corpus: Annotated[Path | None, typer.Option(
        "--corpus", help="Score on your own labelled JSONL file instead of a generated corpus: "
        "one {\"text\": ..., \"spans\": [{\"entity\", \"start\", \"end\"}]} per line "
        "(see docs/privacy.md).")] = None,
    match: Annotated[str | None, typer.Option(
        help="exact (type and span equal) or overlap (a finding of the type overlaps the "
        "label). Default: exact on the generated corpus, overlap with --corpus.")] = None,
    ner: NerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    errors: Annotated[int, typer.Option(help="Show up to this many missed and spurious "
                                        "values.")] = 0,
    check: Annotated[bool, typer.Option(help="Exit 1 when a pattern entity misses recall 0.99 "
                                        "or precision 0.95.")] = False,
) -> None:
    """Score the engine on a labelled corpus: precision, recall and F2 per entity.

    By default the corpus is generated (needs Faker: pip install 'shipyard\\[pii-eval]'): phones
    of a dozen countries, grouped cards, IBANs of twenty countries, compressed IPv6, unicode
    and noise, and near-misses that must not match (order numbers, timestamps, versions, ...).
    With --corpus FILE it is your own labelled text; labelled types the engine cannot report
    (e.g. PERSON without --ner) are listed and left out of the scores.
    """
    from shipyard.privacy.corpus import ENTITIES, generate_corpus
    from shipyard.privacy.evaluate import PATTERN_ENTITIES, evaluate, read_corpus, render_table

    if match is not None and match not in ("exact", "overlap"):
        raise fail(f"--match is '{match}'; use exact or overlap.")
    chosen: Match = "overlap" if (match or ("overlap" if corpus else "exact")) == "overlap" \
        else "exact"
    engine = _engine(ner, None, 0.5)
    samples: list[Sample]
    unscored: dict[str, int] = {}
    try:
        if corpus is not None:
            samples = read_corpus(corpus)
            producible = _producible(engine)
            labelled: dict[str, int] = {}
            for sample in samples:
                for span in sample.spans:
                    labelled[span.entity] = labelled.get(span.entity, 0) + 1
            entities = sorted(e for e in labelled if e in producible)
            unscored = {e: c for e, c in sorted(labelled.items()) if e not in producible}
            if not entities:
                raise fail(f"'{corpus}' labels only {', '.join(labelled) or 'nothing'}, which "
                           "the engine cannot report; label some of "
                           f"{', '.join(sorted(producible))}.")
        else:
            if n < 1:
                raise fail(f"--n is {n}; it must be 1 or more.")
            samples = generate_corpus(n, seed=seed)
            entities = list(ENTITIES)
    except ShipyardError as exc:
        raise fail(exc) from None
    report = evaluate(engine, samples, entities=entities, keep_errors=errors, match=chosen)
    failed = [e for e in PATTERN_ENTITIES if e in report.scores
              and (report.scores[e].recall < 0.99 or report.scores[e].precision < 0.95)]
    verdict = "met" if not failed else "NOT met: " + ", ".join(failed)
    source = f"{corpus}" if corpus is not None else f"generated, seed {seed}"
    if as_json:
        data = report.to_dict()
        data["corpus"] = str(corpus) if corpus is not None else None
        data["seed"] = None if corpus is not None else seed
        data["match"] = chosen
        data["not_scored"] = unscored
        data["targets_met"] = not failed
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        console.print(render_table(report), highlight=False, markup=False)
        scored = [e for e in PATTERN_ENTITIES if e in report.scores]
        console.print(f"\n{report.samples} samples ({source}), {report.chars:,} characters, "
                      f"{chosen} matching, analysed in {report.seconds:.2f} s "
                      f"({report.samples / max(report.seconds, 1e-9):,.0f} samples/s). Targets "
                      f"on {', '.join(scored)}: recall >= 0.99, precision >= 0.95: {verdict}.",
                      highlight=False, markup=False)
        if unscored:
            console.print("Not scored (the engine does not report these types): "
                          + ", ".join(f"{e} ({c})" for e, c in unscored.items()) + ".",
                          highlight=False, markup=False)
        for title, rows in (("missed", report.false_negatives),
                            ("spurious", report.false_positives)):
            for entity, value, text in rows:
                console.print(f"{title} {entity} {value!r} in {text!r}", highlight=False,
                              markup=False, soft_wrap=True)
    if check and failed:
        raise typer.Exit(1)


@app.command("scan")
def scan(
    file: Annotated[Path, typer.Argument(help="Text file to scan; '-' reads standard input.")],
    ner: NerOpt = None,
    entity: EntitiesOpt = None,
    min_score: Annotated[float, typer.Option(help="Drop findings scoring below this.")] = 0.5,
    anonymize: Annotated[str | None, typer.Option(
        help="Print the text anonymized instead of the findings: replace (<EMAIL_1>), redact "
        "or mask.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print findings as JSON lines.")] = False,
    show: Annotated[bool, typer.Option(help="Show found values in full (default: masked, "
                                       "so the output itself leaks nothing).")] = False,
) -> None:
    """Find PII in a file: one line per finding (line:column, entity, score, recognizer).

    Values are masked in the output unless --show. With --anonymize the cleaned text is
    printed instead, e.g. `shipyard pii scan notes.txt --anonymize replace > clean.txt`.
    """
    from shipyard.privacy import Mask, Operator, Redact, Replace

    operators: dict[str, type[Operator]] = {"replace": Replace, "redact": Redact, "mask": Mask}
    if anonymize is not None and anonymize not in operators:
        raise fail(f"--anonymize is '{anonymize}'; use one of {', '.join(operators)}.")
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"Cannot read '{file}' ({type(exc).__name__}: {exc}); pass a UTF-8 text file "
                   "or '-' for standard input.") from None
    engine = _engine(ner, entity, min_score)
    findings = engine.analyze(text)
    if anonymize is not None:
        sys.stdout.write(engine.anonymize(text, findings, operators[anonymize]()))
        return
    masked = [f.text if show else Mask(keep_last=2).replace_one(f) for f in findings]
    line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def position(offset: int) -> tuple[int, int]:
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, offset - line_starts[lo] + 1

    if as_json:
        for f, value in zip(findings, masked, strict=True):
            line, col = position(f.start)
            sys.stdout.buffer.write(orjson.dumps({
                "entity": f.entity, "start": f.start, "end": f.end, "line": line, "column": col,
                "score": round(f.score, 3), "recognizer": f.recognizer, "value": value,
            }) + b"\n")  # fmt: skip
        return
    if not findings:
        console.print(f"No PII found in {file}.")
        return
    table = Table(show_edge=False, pad_edge=False)
    for name in ("line:col", "entity", "score", "recognizer", "value"):
        table.add_column(name)
    for f, value in zip(findings, masked, strict=True):
        line, col = position(f.start)
        table.add_row(f"{line}:{col}", f.entity, f"{f.score:.2f}", f.recognizer, value)
    console.print(table)
    console.print(f"{len(findings)} findings.")
