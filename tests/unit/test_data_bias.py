"""Bias and representation report: per-group rows, labels, missingness, warnings; HTML + JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from shipyard.data import parse_pipeline, run_pipeline
from shipyard.data.bias import BiasAccumulator, render_bias_html
from shipyard.data.config import BiasSpec


def test_groups_labels_missingness_and_warnings() -> None:
    acc = BiasAccumulator(BiasSpec(attributes=["gender", "region"], label="approved",
                                   min_share=0.1, max_ratio=5))
    gender = ["f"] * 30 + ["m"] * 65 + ["x"] * 3 + [None] * 2
    approved = [1] * 15 + [0] * 15 + [1] * 52 + [0] * 13 + [0] * 3 + [1] * 2
    income = [None] * 10 + [1.0] * 90
    region = ["north"] * 50 + ["south"] * 50
    half = 50
    for lo, hi in ((0, half), (half, 100)):  # two batches: counts accumulate
        acc.add(pa.record_batch({"gender": gender[lo:hi], "approved": approved[lo:hi],
                                 "income": income[lo:hi], "region": region[lo:hi]}))
    report = acc.report()
    g = report["attributes"]["gender"]
    assert report["rows"] == 100
    assert {k: v["rows"] for k, v in g["groups"].items()} == {"m": 65, "f": 30, "x": 3,
                                                               "(missing)": 2}
    assert g["groups"]["f"]["labels"] == {"0": 0.5, "1": 0.5}
    assert g["groups"]["m"]["labels"] == {"0": 0.2, "1": 0.8}
    assert g["groups"]["f"]["missing"] == {"income": round(10 / 30, 4)}
    assert g["imbalance_ratio"] == round(65 / 3, 3)
    assert g["label_parity"]["rate_by_group"] == {"m": 0.8, "f": 0.5, "x": 0.0}
    warnings = " | ".join(report["warnings"])
    assert "group gender=x holds 3.0% of rows" in warnings
    assert "the largest group is 21.7x the smallest" in warnings
    assert report["attributes"]["region"]["imbalance_ratio"] == 1.0


def test_html_embeds_plotly_and_fetches_nothing() -> None:
    acc = BiasAccumulator(BiasSpec(attributes=["g"], label="y"))
    acc.add(pa.record_batch({"g": ["a", "b", "b"], "y": ["yes", "no", "yes"],
                             "z": [None, 1, 2]}))
    page = render_bias_html(acc.report(), title="t <v1>")
    assert "t &lt;v1&gt;" in page and "Plotly" in page and "Rows per g" in page
    assert "<script src=" not in page  # plotly.js is inline, not fetched from a CDN


def test_pipeline_writes_bias_json_and_html(tmp_path: Path) -> None:
    rows = ["id,group,label"] + [f"{i},{'a' if i % 20 else 'b'},{i % 2}" for i in range(200)]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    config = parse_pipeline(
        "name: b\nsource: {path: in.csv}\n"
        "schema: {columns: {id: {type: int}, group: {}, label: {type: int}}}\n"
        "bias: {attributes: [group], label: label, min_share: 0.1}\n", base_dir=tmp_path)
    report = run_pipeline(config)
    folder = Path(str(report.path))
    bias = json.loads((folder / "bias.json").read_text())
    assert bias["attributes"]["group"]["groups"]["b"]["rows"] == 10
    assert any("group=b" in w for w in report.warnings)
    assert (folder / "bias.html").read_text().startswith("<!doctype html>")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"]["bias_html"] == "bias.html"


def test_the_documented_example_gives_the_documented_numbers(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "data"
    config = parse_pipeline((example / "pipeline.yaml").read_text(), base_dir=example)
    report = run_pipeline(config, dry_run=True)
    line = (f"applicants: {report.rows_in} rows in = {report.rows_out} out + "
            f"{report.rows_quarantined} quarantined + {report.duplicates_removed} duplicates "
            "removed")
    assert line in (example.parents[1] / "docs" / "data.md").read_text()
    assert report.bias is not None and "region=islands" in report.bias["warnings"][0]


def test_under_represented_share_never_reads_as_the_threshold() -> None:
    # 249 of 5,000 is 4.98%: rounded to one decimal it would read "5.0% ... below 5.0%".
    acc = BiasAccumulator(BiasSpec(attributes=["g"], min_share=0.05))
    acc.add(pa.record_batch({"g": ["a"] * 4751 + ["b"] * 249}))
    [warning] = [w for w in acc.report()["warnings"] if "g=b" in w]
    assert "holds 4.98% of rows (249 of 5,000), below the 5.00% threshold" in warning
