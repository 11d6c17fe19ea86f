"""`shipyard data run|list|show|diff|export`, driven as a user would, in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

PIPELINE = """\
name: reviews
source: {path: raw.csv}
schema:
  columns:
    id: {type: int, required: true, unique: true}
    group: {type: string, enum: [a, b]}
    label: {type: int}
    text: {type: string}
pii: {columns: [text], mode: pseudonymize}
bias: {attributes: [group], label: label}
"""


def shipyard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "shipyard", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_list_show_diff_export(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    (tmp_path / "raw.csv").write_text(
        "id,group,label,text\n1,a,1,mail ann@example.com\n2,b,0,fine\n2,b,0,fine\n"
        "3,c,1,bad group\n4,a\n")
    store = ["--store-url", f"sqlite:///{tmp_path}/store.db"]
    dry = shipyard("data", "run", "pipeline.yaml", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "5 rows in = 2 out + 2 quarantined + 1 duplicates removed" in dry.stdout
    assert "dry run: nothing written" in dry.stdout and not (tmp_path / "datasets").exists()
    first = shipyard("data", "run", "pipeline.yaml", "--json", *store, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["rows"] == {"in": 5, "out": 2, "quarantined": 2, "duplicates_removed": 1}
    assert report["quarantine_by_rule"] == {"enum": 1, "malformed": 1}
    folder = Path(report["path"])
    assert pq.read_table(folder / "data.parquet").column("text").to_pylist() == [
        "mail <EMAIL_1>", "fine"]
    assert {p.name for p in folder.iterdir()} >= {"data.parquet", "quarantine.parquet",
                                                  "manifest.json", "report.json", "bias.html",
                                                  "bias.json"}
    with (tmp_path / "raw.csv").open("a") as f:
        f.write("5,b,1,new row\n")
    second = shipyard("data", "run", "pipeline.yaml", *store, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "version 2 written" in second.stdout
    listed = shipyard("data", "list", "--json", *store, cwd=tmp_path)
    assert [r["version"] for r in json.loads(listed.stdout)] == [2, 1]
    shown = shipyard("data", "show", "reviews@1", *store, cwd=tmp_path)
    assert json.loads(shown.stdout)["rows"]["out"] == 2
    diff = shipyard("data", "diff", "reviews@1", "reviews@2", "--json", *store, cwd=tmp_path)
    assert json.loads(diff.stdout)["rows"]["added"] == 1
    table = shipyard("data", "diff", "reviews@1", "reviews", *store, cwd=tmp_path)
    assert "rows: 2 → 3 (+1 added, -0 removed, 2 unchanged)" in table.stdout
    export = shipyard("data", "export", "reviews", "-o", "out.csv", "--format", "csv", *store,
                      cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "out.csv").read_text().count("\n") == 4


def test_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\nsource: {path: missing.csv}\n"
                                       "schema: {columns: {a: {type: integer}}}\n")
    bad = shipyard("data", "run", "bad.yaml", "--dry-run", cwd=tmp_path)
    assert bad.returncode == 1
    assert "schema.columns.a.type" in bad.stderr and "'integer'" in bad.stderr
    (tmp_path / "nofile.yaml").write_text("name: x\nsource: {path: missing.csv}\n")
    missing = shipyard("data", "run", "nofile.yaml", "--dry-run", cwd=tmp_path)
    assert missing.returncode == 1 and "'missing.csv', which is not a file" in missing.stderr
    unknown = shipyard("data", "show", "nope", "--store-url", f"sqlite:///{tmp_path}/s.db",
                       cwd=tmp_path)
    assert unknown.returncode == 1 and "No dataset version matches 'nope'" in unknown.stderr
