"""Write a labelled PII corpus made by `presidio-evaluator`'s generator (run in its own venv).

    bench/.venv-presidio/bin/python bench/presidio_corpus.py --split heldout --n 3000 out.jsonl

The generator is Microsoft's `PresidioSentenceFaker` (package `presidio-evaluator`): its own
sentence templates (`raw_data/templates.txt`), its own person records (FakeNameGenerator.com,
3,000 people of 30 countries: names, national phone numbers, e-mails, ...) and Faker. Nothing
in it was written by Shipyard. This script only picks a split of the templates and a seed, and
writes each sample as one line of the format `shipyard pii eval --corpus` reads:

    {"text": "...", "spans": [{"entity": "PHONE", "start": 12, "end": 25}, ...]}

with the generator's entity names mapped to Shipyard's where they mean the same thing
(`PHONE_NUMBER` -> `PHONE`, `EMAIL_ADDRESS` -> `EMAIL`, `IBAN_CODE` -> `IBAN`, `DOMAIN_NAME`
-> `URL`: the generator's `{{url}}` values are full URLs); other labels (`PERSON`,
`STREET_ADDRESS`, ...) are kept as the generator names them.

Splits: `dev` uses the templates at even positions of the generator's file and seed 11;
`heldout` uses those at odd positions and seed 2026. Shipyard's recognizers were tuned looking
at `dev` only; `heldout` is what the benchmark reports.

This file runs under the Presidio venv's Python, never Shipyard's: it imports only
`presidio_evaluator` and the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

SPLITS = {"dev": (0, 11), "heldout": (1, 2026)}  # (template parity, seed)
TO_SHIPYARD = {
    "PHONE_NUMBER": "PHONE",
    "EMAIL_ADDRESS": "EMAIL",
    "IBAN_CODE": "IBAN",
    "DOMAIN_NAME": "URL",
}


def generate(split: str, n: int) -> list[dict[str, Any]]:
    from presidio_evaluator.data_generator import presidio_sentence_faker as psf
    from presidio_evaluator.data_generator.faker_extensions import HospitalProvider

    class OfflineHospitals(HospitalProvider):  # type: ignore[misc]
        """The stock provider asks WikiData over the network for hospital names; this machine
        is offline, so it keeps the provider's own built-in list (the fallback it uses when
        WikiData does not answer). No PII type that Shipyard scores depends on it."""

        def load_hospitals(self, hospital_file: Any) -> list[str]:
            return list(self.default_list)

    parity, seed = SPLITS[split]
    lines = psf.presidio_templates_file_path.read_text(encoding="utf-8").splitlines()
    templates = [t.strip() for i, t in enumerate(lines) if i % 2 == parity and t.strip()]
    providers = [OfflineHospitals if p is HospitalProvider else p
                 for p in psf.presidio_additional_entity_providers]
    faker = psf.PresidioSentenceFaker("en_US", lower_case_ratio=0.05, sentence_templates=templates,
                                      entity_providers=providers, random_seed=seed)
    out = []
    for sample in faker.generate_new_fake_sentences(n):
        text = sample.full_text
        spans = []
        for span in sample.spans:
            start, end = span.start_position, span.end_position
            # The generator's lower-casing (`lower_case_ratio`) lowers the span values but not
            # the text, so compare without case.
            if text[start:end].lower() != str(span.entity_value).lower():
                raise SystemExit(f"generator span does not match its text: {span} in {text!r}")
            entity = TO_SHIPYARD.get(span.entity_type, span.entity_type)
            spans.append({"entity": entity, "start": start, "end": end})
        spans.sort(key=lambda s: s["start"])
        out.append({"text": text, "spans": spans, "template": sample.template_id})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=sorted(SPLITS), required=True)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("out")
    args = parser.parse_args()
    samples = generate(args.split, args.n)
    with open(args.out, "w", encoding="utf-8") as handle:
        for s in samples:
            handle.write(json.dumps(s, ensure_ascii=False) + "\n")
    print(f"{len(samples)} samples -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
