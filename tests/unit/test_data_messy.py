"""Messy inputs no one curated: each gives clean or quarantined rows, and the rows add up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shipyard.data import RunReport, parse_pipeline, run_pipeline

SCHEMA = """
schema:
  columns:
    id: {type: int, required: true}
    name: {type: string}
    amount: {type: float}
"""


def run(tmp_path: Path, body: bytes, *, extra: str = SCHEMA, suffix: str = "csv",
        source: str = "", **kwargs: Any) -> tuple[RunReport, list[dict[str, Any]],
                                                  list[dict[str, Any]]]:
    data = tmp_path / f"in.{suffix}"
    data.write_bytes(body)
    text = f"name: t\nsource: {{path: in.{suffix}{source}}}\n{extra}"
    config = parse_pipeline(text, base_dir=tmp_path)
    report = run_pipeline(config, **kwargs)
    report.check()
    assert report.rows_in == report.rows_out + report.rows_quarantined + report.duplicates_removed
    if report.path is None:
        return report, [], []
    out = pq.read_table(Path(report.path) / "data.parquet").to_pylist()
    qfile = Path(report.path) / "quarantine.parquet"
    quarantine = pq.read_table(qfile).to_pylist() if qfile.exists() else []
    assert len(out) == report.rows_out
    assert len(quarantine) == report.rows_quarantined
    assert all(q["reason"] for q in quarantine)
    return report, out, quarantine


def test_malformed_lines_are_quarantined_with_their_line(tmp_path: Path) -> None:
    body = b"id,name,amount\n1,a,1.5\n2,b\n3,c,3,extra\n4,\"d\"x,4\n5,e,5\n"
    report, out, q = run(tmp_path, body)
    assert [r["id"] for r in out] == [1, 5]
    assert report.rows_in == 5 and report.rows_quarantined == 3
    assert {x["line"] for x in q} == {3, 4, 5}
    assert all(x["rule"] == "malformed" for x in q)
    assert any("2 fields, the header has 3" in x["reason"] for x in q)


def test_wrong_encoding_is_detected_and_reported(tmp_path: Path) -> None:
    body = "id,name,amount\n1,Café crème,1\n2,Zoë Müller,2\n3,naïve façade,3\n".encode("cp1252")
    report, out, q = run(tmp_path, body * 1)
    assert not q
    assert [r["name"] for r in out] == ["Café crème", "Zoë Müller", "naïve façade"]
    encoding = report.source["files"][0]["encoding"]
    assert encoding.replace("_", "").lower() in {"cp1252", "windows1252", "latin1", "iso88591",
                                                  "cp1250", "iso885915"}


def test_mixed_encodings_quarantine_the_undecodable_rows(tmp_path: Path) -> None:
    body = ("id,name,amount\n1,Zoë,1\n".encode() + "2,Zoë,2\n".encode("latin-1")
            + "3,Ünïcode,3\n".encode())
    report, out, q = run(tmp_path, body)
    assert [r["name"] for r in out] == ["Zoë", "Ünïcode"]
    assert len(q) == 1 and q[0]["rule"] == "decode" and q[0]["line"] == 3
    assert "undecodable bytes" in q[0]["reason"]
    report, out, q = run(tmp_path, body, source=", fallback_encoding: cp1252")
    assert [r["name"] for r in out] == ["Zoë", "Zoë", "Ünïcode"] and not q
    assert any("read as cp1252" in w for w in report.warnings)


def test_utf8_bom_is_stripped_from_the_header(tmp_path: Path) -> None:
    report, out, _ = run(tmp_path, b"\xef\xbb\xbfid,name,amount\n1,a,2\n")
    assert out == [{"id": 1, "name": "a", "amount": 2.0}]
    assert report.source["files"][0]["bom"] is True


def test_utf16_with_bom(tmp_path: Path) -> None:
    report, out, _ = run(tmp_path, "id,name,amount\n1,Ωmega,2\n".encode("utf-16"))
    assert out == [{"id": 1, "name": "Ωmega", "amount": 2.0}]
    assert report.source["files"][0]["encoding"] == "utf-16"


def test_mixed_types_in_a_column_give_a_reason_per_row(tmp_path: Path) -> None:
    body = b"id,name,amount\n1,a,1.5\n2,b,abc\nx,c,3\n4,d,1e3\n5.0,e,\n6.5,f,1\n"
    _report, out, q = run(tmp_path, body)
    assert [(r["id"], r["amount"]) for r in out] == [(1, 1.5), (4, 1000.0), (5, None)]
    reasons = {x["line"]: (x["rule"], x["column"], x["value"], x["reason"]) for x in q}
    assert reasons[3] == ("type", "amount", "abc", "'abc' is not a number")
    assert reasons[4][:3] == ("type", "id", "x")
    assert reasons[7][3] == "'6.5' is not a whole number"


def test_a_10mb_field_is_kept_or_quarantined_by_max_length(tmp_path: Path) -> None:
    big = "x" * (10 * 1024 * 1024)
    body = f"id,name,amount\n1,\"{big}\",1\n2,b,2\n".encode()
    report, out, _ = run(tmp_path, body)
    assert report.rows_out == 2 and len(out[0]["name"]) == len(big)
    limited = SCHEMA.replace("name: {type: string}", "name: {type: string, max_length: 1000}")
    report, out, q = run(tmp_path, body, extra=limited)
    assert [r["id"] for r in out] == [2]
    assert q[0]["rule"] == "max_length" and "above the maximum 1000" in q[0]["reason"]


@pytest.mark.parametrize("body", [b"", b"\n\n", b"id,name,amount\n"], ids=["empty", "blank",
                                                                            "header-only"])
def test_empty_files_give_an_empty_dataset(tmp_path: Path, body: bytes) -> None:
    report, out, q = run(tmp_path, body)
    assert (report.rows_in, out, q) == (0, [], [])
    schema = pq.read_schema(Path(str(report.path)) / "data.parquet")
    assert schema.names == ["id", "name", "amount"]
    if not body.strip():
        assert any("empty file" in w for w in report.warnings)


def test_a_file_truncated_mid_row(tmp_path: Path) -> None:
    _, out, q = run(tmp_path, b"id,name,amount\n1,a,1\n2,b,2\n3,\"unterminated na")
    assert [r["id"] for r in out] == [1, 2]
    assert q[0]["reason"] == "malformed CSV: truncated: the file ends inside a quoted field"
    _report, out, q = run(tmp_path, b"id,name,amount\n1,a,1\n2,b")
    assert [r["id"] for r in out] == [1] and "2 fields" in q[0]["reason"]


def test_duplicate_headers_are_renamed_and_reported(tmp_path: Path) -> None:
    report, out, _ = run(tmp_path, b"id,name,name,amount\n1,a,b,2\n",
                         extra="schema: {extra_columns: keep}\n")
    assert out == [{"id": "1", "name": "a", "name__2": "b", "amount": "2"}]
    assert any("duplicate header 'name'" in w for w in report.warnings)


def test_null_heavy_columns(tmp_path: Path) -> None:
    rows = ["id,name,amount"] + [f"{i},{'NULL' if i % 10 else 'x'},{'' if i % 3 else i}"
                                 for i in range(1, 101)] + [",a,1", "N/A,b,2"]
    report, _out, q = run(tmp_path, ("\n".join(rows) + "\n").encode())
    assert report.rows_out == 100 and report.nulls["name"] == 90
    assert report.nulls["amount"] == 67
    assert [x["rule"] for x in q] == ["required", "required"]
    assert q[0]["reason"] == "'id' is required but missing or empty"


def test_jsonl_with_bad_lines_and_a_truncated_tail(tmp_path: Path) -> None:
    body = b'{"id": 1, "name": "a"}\nnot json\n[1, 2]\n{"id": "2", "amount": "3.5"}\n{"id": 3, "na'
    _report, out, q = run(tmp_path, body, suffix="jsonl")
    assert [(r["id"], r["amount"]) for r in out] == [(1, None), (2, 3.5)]
    assert [x["line"] for x in q] == [2, 3, 5]
    assert q[2]["reason"].startswith("truncated")


def test_parquet_source_and_a_glob_of_csv_files(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "name": ["a", None], "amount": [1.0, 2.0]}),
                   tmp_path / "in.parquet")
    report, out, _ = run(tmp_path, (tmp_path / "in.parquet").read_bytes(), suffix="parquet")
    assert out == [{"id": 1, "name": "a", "amount": 1.0}, {"id": 2, "name": None, "amount": 2.0}]
    (tmp_path / "parts").mkdir()
    for i in range(3):
        (tmp_path / "parts" / f"p{i}.csv").write_text(f"id,name,amount\n{i},n{i},{i}\n")
    config = parse_pipeline("name: g\nsource: {path: 'parts/*.csv'}\n" + SCHEMA,
                            base_dir=tmp_path)
    report = run_pipeline(config, dry_run=True)
    assert report.rows_out == 3 and len(report.source["files"]) == 3


def test_tsv_without_header(tmp_path: Path) -> None:
    extra = SCHEMA.replace("id: {", "id: {source: column_1, ").replace(
        "name: {", "name: {source: column_2, ").replace("amount: {", "amount: {source: column_3, ")
    _report, out, _ = run(tmp_path, b"1\ta b\t2\n", suffix="tsv", source=", header: false",
                         extra=extra)
    assert out == [{"id": 1, "name": "a b", "amount": 2.0}]


def test_cleaning_mojibake_html_unicode_and_whitespace(tmp_path: Path) -> None:
    body = ("id,name,amount\n1,\"  <p>Caf\u00c3\u00a9 &amp; cr\u00c3\u00a8me</p>   au\tlait \","
            "1\n2,\"\uff21\uff22\u00a0 x\",2\n").encode()
    extra = SCHEMA + "clean: {unicode: NFKC, strip_html: [name]}\n"
    _, out, _ = run(tmp_path, body, extra=extra)
    assert [r["name"] for r in out] == ["Café & crème au lait", "AB x"]


def test_rules_enum_regex_unique_and_exact_duplicates(tmp_path: Path) -> None:
    extra = """
schema:
  columns:
    id: {type: int, unique: true}
    kind: {type: string, enum: [a, b]}
    code: {type: string, regex: '[A-Z]{2}[0-9]+'}
    start: {type: date}
    end: {type: date}
  rules:
    - {name: ends_after_start, check: end >= start}
    - {name: b_needs_code, check: "code != 'XX0'", when: "kind == 'b'"}
"""
    body = (b"id,kind,code,start,end\n1,a,AB1,2024-01-01,2024-02-01\n"
            b"1,a,AB1,2024-01-01,2024-02-01\n"  # exact duplicate: removed, not quarantined
            b"1,b,AB2,2024-01-01,2024-02-01\n"  # same id, different row: unique violation
            b"2,c,AB3,2024-01-01,2024-02-01\n3,a,ab4,2024-01-01,2024-02-01\n"
            b"4,a,AB5,2024-03-01,2024-02-01\n5,b,XX0,2024-01-01,2024-02-01\n"
            b"6,a,XX0,2024-01-01,2024-02-01\n")
    report, out, q = run(tmp_path, body, extra=extra)
    assert [r["id"] for r in out] == [1, 6]
    assert report.duplicates_removed == 1 and report.exact_duplicates == 1
    assert [x["rule"] for x in sorted(q, key=lambda x: x["line"])] == [
        "unique", "enum", "regex", "ends_after_start", "b_needs_code"]
    assert report.duplicate_clusters == [{"first_row": 1, "copies": 2}]


def test_near_duplicates_are_clustered_and_optionally_dropped(tmp_path: Path) -> None:
    texts = ["The delivery was late and the box was damaged on arrival.",
             "The delivery was late and the box was damaged on arrival!!",
             "the delivery was LATE and the box was damaged on arrival.",
             "Great product, works exactly as described, five stars."]
    body = ("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts, 1))).encode()
    extra = ("schema: {columns: {id: {type: int}, text: {type: string}}}\n"
             "dedup: {columns: [text], near: {column: text, threshold: 0.7}}\n")
    report, out, _ = run(tmp_path, body, extra=extra)
    assert report.rows_out == 3 and report.exact_duplicates == 1
    assert report.near_duplicate_clusters == [[1, 2]] and report.near_duplicates == 1
    dropped = extra.replace("threshold: 0.7", "threshold: 0.7, action: drop")
    report, out, _ = run(tmp_path, body, extra=dropped)
    assert [r["id"] for r in out] == [1, 4] and report.duplicates_removed == 2


@pytest.mark.parametrize("mode", ["redact", "hash", "pseudonymize", "mask"])
def test_pii_modes(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DATA_PII_KEY", "k" * 32)
    body = (b'id,note,other\n1,"mail bob@example.com or call +1 415-555-0123",'
            b'"bob@example.com"\n2,no personal data here,plain\n')
    key = ", key: {$env: TEST_DATA_PII_KEY}" if mode == "hash" else ""
    extra = (f"schema: {{columns: {{id: {{type: int}}, note: {{}}, other: {{}}}}}}\n"
             f"pii: {{columns: [note, other], mode: {mode}{key}}}\n")
    report, out, _ = run(tmp_path, body, extra=extra)
    assert "bob@example.com" not in json.dumps(out)
    assert out[1]["note"] == "no personal data here"
    assert report.pii is not None and report.pii["findings"] == {"EMAIL": 2, "PHONE": 1}
    if mode == "redact":
        assert out[0]["note"] == "mail [REDACTED] or call [REDACTED]"
    if mode == "pseudonymize":  # consistent within the row, across columns
        assert out[0]["note"] == "mail <EMAIL_1> or call <PHONE_1>"
        assert out[0]["other"] == "<EMAIL_1>"
    if mode == "hash":  # keyed and stable: the same value hashes the same in both columns
        assert out[0]["other"] in out[0]["note"] and len(out[0]["other"]) == 16


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    report, _out, _q = run(tmp_path, b"id,name,amount\n1,a,1\n2,b,x\n", dry_run=True)
    assert (report.rows_out, report.rows_quarantined, report.path) == (1, 1, None)
    assert not (tmp_path / "datasets").exists()


def test_two_workers_give_the_same_result(tmp_path: Path) -> None:
    rows = ["id,name,amount"] + [f"{i % 700},n{i % 700},{i % 700}" for i in range(2000)] + ["x"]
    body = ("\n".join(rows) + "\n").encode()
    one, out1, q1 = run(tmp_path, body, source=", batch_size: 300")
    two, out2, q2 = run(tmp_path, body, source=", batch_size: 300", workers=2)
    assert (one.rows_in, one.rows_out, one.duplicates_removed) == (2001, 700, 1300)
    assert (two.rows_in, two.rows_out, two.duplicates_removed) == (2001, 700, 1300)
    assert out1 == out2 and len(q1) == len(q2) == 1


def test_the_quarantine_holds_no_pii(tmp_path: Path) -> None:
    body = (b'id,note\nx,"mail bob@example.com"\n2,"call +1 415-555-0123",extra\n'
            b'3,"ann@example.com"\n')
    extra = ("schema: {columns: {id: {type: int}, note: {regex: '[a-z ]+'}}}\n"
             "pii: {columns: [note], mode: redact}\n")
    report, out, q = run(tmp_path, body, extra=extra)
    assert out == [] and report.rows_quarantined == 3
    dumped = json.dumps(q)
    assert "bob@example" not in dumped and "415-555" not in dumped and "ann@" not in dumped
    assert {x["rule"] for x in q} == {"type", "malformed", "regex"}
    assert report.pii is not None and report.pii["findings"] == {"EMAIL": 2, "PHONE": 1}


def test_a_declared_column_missing_from_the_input_is_reported(tmp_path: Path) -> None:
    report, out, _ = run(tmp_path, b"id,name\n1,a\n")
    assert out == [{"id": 1, "name": "a", "amount": None}]
    assert any("declared column(s) amount not in the input" in w for w in report.warnings)
    again, _, _ = run(tmp_path, b"id,name\n1,a\n")
    assert Path(str(again.path)).name == "v2" and Path(str(report.path)).name == "v1"


def test_declared_pii_columns_keep_no_value_whatever_its_validity(tmp_path: Path) -> None:
    # 30,000 rows: a phone column as people fill it in (valid, foreign, too short, bare, with
    # letters or an extension) declared as a value column; a contact column of free text
    # whose values are often just a number no recognizer validates.
    import random

    rng = random.Random(17)
    forms = ["({}) 555-{:04d}", "+44 20 7946 {1:04d}", "555-{1:04d}", "{0}{1:04d}",
             "call {0} {1}", "{0}-555-{1:04d} x12", "0{0} {1:04d}", "1{1:04d}"]
    lines = ["id,phone,contact,amount"]
    planted = []
    for i in range(30_000):
        phone = rng.choice(forms).format(rng.randrange(200, 999), rng.randrange(10_000))
        contact = rng.choice(["{0}-{1:04d}", "ring {0} {1:04d}", "0{0} {1:04d} 12"]).format(
            rng.randrange(100, 999), rng.randrange(10_000))
        amount = "x" if i % 97 == 0 else str(i)  # some rows go to the quarantine
        lines.append(f'{i},"{phone}","{contact}",{amount}')
        planted += [phone, contact]
    body = ("\n".join(lines) + "\n").encode()
    extra = ("schema: {columns: {id: {type: int}, phone: {}, contact: {}, amount: {type: int}}}\n"
             "pii: {columns: [contact], value_columns: {phone: PHONE}, mode: redact}\n"
             "dedup: {exact: false}\n")
    for workers in (1, 2):
        report, out, q = run(tmp_path, body, extra=extra, source=", batch_size: 4000",
                             workers=workers)
        assert report.rows_out + report.rows_quarantined == 30_000
        assert {r["phone"] for r in out} == {"[REDACTED]"}
        kept = {r["contact"] for r in out}
        assert kept <= {"[REDACTED]", "ring [REDACTED]"}, sorted(kept)[:5]
        dumped = json.dumps(q)
        assert not any(value in dumped for value in planted[:2000:7])
        assert report.pii is not None and report.pii["findings"]["PHONE"] >= report.rows_out
