"""SQL sources against the real PostgreSQL, and dataset versions in both stores."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from shipyard.data import (
    DatasetRegistry,
    diff_versions,
    export_version,
    parse_pipeline,
    run_pipeline,
)
from shipyard.errors import ConfigError, NotFound
from shipyard.store import create_store_engine, migrate


@pytest.mark.postgres
def test_sql_source_streams_a_postgres_query(postgres_url: str, tmp_path: Path) -> None:
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE data_src (id int, email text, score text, note text)"))
        conn.execute(text(
            "INSERT INTO data_src SELECT g, 'user' || g || '@example.com', "
            "CASE WHEN g % 100 = 0 THEN 'n/a' ELSE (g % 7)::text END, "
            "CASE WHEN g % 50 = 0 THEN NULL ELSE ' note  ' || g END "
            "FROM generate_series(1, 2500) g"))
    try:
        config = parse_pipeline(
            f"name: pg\nsource: {{url: '{postgres_url}', query: 'SELECT * FROM data_src "
            "ORDER BY id', batch_size: 300}\n"
            "schema: {columns: {id: {type: int, unique: true}, email: {}, "
            "score: {type: int, max: 5}, note: {}}}\n"
            "pii: {columns: [email], mode: redact}\n", base_dir=tmp_path)
        report = run_pipeline(config)
        report.check()
        assert report.source["format"] == "sql"
        # Score 'n/a' is a null (not an error); score 6 fails max 5.
        assert report.rows_in == 2500
        too_high = sum(1 for g in range(1, 2501) if g % 7 == 6 and g % 100)
        assert report.quarantine_by_rule == {"max": too_high}
        rows = pq.read_table(Path(str(report.path)) / "data.parquet").to_pylist()
        assert len(rows) == report.rows_out
        assert rows[0] == {"id": 1, "email": "[REDACTED]", "score": 1, "note": "note 1"}
        assert sum(r["note"] is None for r in rows) == report.nulls["note"]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE data_src"))
        engine.dispose()


def test_a_bad_query_fails_with_a_clear_error(tmp_path: Path) -> None:
    config = parse_pipeline(f"name: q\nsource: {{url: 'sqlite:///{tmp_path}/x.db', "
                            "query: 'SELECT * FROM nowhere'}\n", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"The SQL source .* failed: .*no such table"):
        run_pipeline(config, dry_run=True)


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_versions_manifest_parent_and_diff(store_url: str, tmp_path: Path) -> None:
    store = create_store_engine(store_url)
    migrate(store)
    data = tmp_path / "in.csv"
    pipeline = ("name: people\nsource: {path: in.csv}\n"
                "schema: {columns: {id: {type: int}, city: {}, age: {type: int}}}\n")
    data.write_text("id,city,age\n" + "".join(f"{i},{'A' if i % 2 else 'B'},{20 + i % 30}\n"
                                              for i in range(100)))
    one = run_pipeline(parse_pipeline(pipeline, base_dir=tmp_path), store=store)
    data.write_text("id,city,age\n" + "".join(f"{i},{'A' if i % 3 else 'C'},{40 + i % 30}\n"
                                              for i in range(10, 130)))
    two = run_pipeline(parse_pipeline(pipeline.replace("age: {type: int}}",
                                                       "age: {type: float}}"),
                                      base_dir=tmp_path), store=store)
    registry = DatasetRegistry(store)
    assert [r["version"] for r in registry.list("people")] == [2, 1]
    latest = registry.get("people")
    assert latest["id"] == two.dataset_id and registry.get("people@v1")["id"] == one.dataset_id
    assert registry.get(one.dataset_id[:10])["version"] == 1
    manifest = latest["manifest"]
    assert manifest["parent"] == {"id": one.dataset_id, "version": 1}
    assert manifest["rows"] == {"in": 120, "out": 120, "quarantined": 0,
                                "duplicates_removed": 0}
    assert len(manifest["content_hash"]) == 64 and len(manifest["config_hash"]) == 64
    assert manifest["config_hash"] != registry.get("people@1")["manifest"]["config_hash"]
    on_disk = json.loads((Path(manifest["path"]) / "manifest.json").read_text())
    assert on_disk["content_hash"] == manifest["content_hash"]
    diff = diff_versions(registry.get("people@1"), latest)
    assert diff["schema"]["type_changed"] == {"age": ["int64", "double"]}
    assert diff["rows"]["old"] == 100 and diff["rows"]["new"] == 120
    assert diff["rows"]["added"] + diff["rows"]["unchanged"] == 120
    assert diff["rows"]["removed"] + diff["rows"]["unchanged"] == 100
    assert diff["shift"]["city"]["new_values"] == ["C"] and diff["shift"]["city"]["psi"] > 0.25
    assert diff["shift"]["id"]["kind"] == "numeric"
    out = tmp_path / "export.jsonl"
    assert export_version(Path(manifest["path"]) / "data.parquet", out, "jsonl") == 120
    assert json.loads(out.read_text().splitlines()[0]) == {"id": 10, "city": "A", "age": 50.0}
    with pytest.raises(NotFound, match="No dataset version matches 'people@9'"):
        registry.get("people@9")
    store.dispose()
