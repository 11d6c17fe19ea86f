"""File drops on a temporary folder, run in process over a real gateway runtime and store:
CSV, JSONL and Parquet files through a hosted service, moved to done/ with their results and
summary; an unreadable file to failed/; rows that fail are listed, not lost; every file is a
run in the store and every row a trace."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from conftest import FIXTURES
from shipyard.config import parse_config
from shipyard.config.loader import install_python_path
from shipyard.connectors import Connectors, RunLog
from shipyard.gateway.invoke import Invoker
from shipyard.gateway.runtime import Gateway

SCHEMA = ('{type: object, required: [id, text], properties: {id: {type: integer}, '
          'text: {type: string}}}')


def _config(tmp_path: Path, inbox: Path, extra: str = "") -> str:
    return f"""
python_path: ["{FIXTURES}"]
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces: {{flush_interval_s: 0.05}}
auth: {{disabled: true}}
services:
  score: {{function: "connector_services:score", input_schema: {SCHEMA}}}
  flaky: {{function: "connector_services:flaky", input_schema: {SCHEMA}}}
connectors:
  drops:
    kind: files
    path: {inbox}
    settle_s: 0
    poll_interval_s: 0.1
    target: {{service: score}}
{extra}
"""


def test_file_drops_through_a_service(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text("id,text\n1,hello world\n2,one two three\n")
    # Line 2 is not JSON, line 3 fails the service's input schema.
    (inbox / "b.jsonl").write_bytes(b'{"id": 3, "text": "x"}\n{"id": 4,\n{"id": 5}\n')
    pq.write_table(pa.table({"id": [6, 7], "text": ["a b", "c"]}), inbox / "c.parquet")
    (inbox / "d.parquet").write_bytes(b"this is not parquet")
    (inbox / "notes.txt").write_text("not matched by the patterns")
    config = parse_config(_config(tmp_path, inbox))
    install_python_path(config)

    async def scenario() -> None:
        gateway = Gateway(config)
        await gateway.start()
        try:
            connectors = Connectors(gateway, Invoker(gateway))
            connector = await connectors.run("drops", idle_exit_s=0.5)
            assert connector.stats.processed == 7
            assert (connector.stats.succeeded, connector.stats.failed) == (5, 2)
        finally:
            await gateway.stop()

    asyncio.run(scenario())
    done, failed = inbox / "done", inbox / "failed"
    assert sorted(p.name for p in done.iterdir() if not p.name.endswith(
        (".summary.json", ".results.jsonl"))) == ["a.csv", "b.jsonl", "c.parquet"]
    lines = [orjson.loads(x) for x in (done / "a.csv.results.jsonl").read_bytes().splitlines()]
    assert [x["output"] for x in lines] == [{"id": 1, "words": 2}, {"id": 2, "words": 3}]
    assert all(x["trace_id"] for x in lines)
    b = [orjson.loads(x) for x in (done / "b.jsonl.results.jsonl").read_bytes().splitlines()]
    assert [x["status"] for x in b] == ["ok", "failed", "failed"]
    assert b[1]["error"].startswith("bad_json") and "text" in b[2]["error"]
    summary = orjson.loads((done / "b.jsonl.summary.json").read_bytes())
    assert (summary["rows"], summary["ok"], summary["failed"]) == (3, 1, 2)
    parquet = [orjson.loads(x) for x in (done / "c.parquet.results.jsonl").read_bytes()
               .splitlines()]
    assert [x["output"]["words"] for x in parquet] == [2, 1]
    assert (failed / "d.parquet").exists()
    broken = orjson.loads((failed / "d.parquet.summary.json").read_bytes())
    assert broken["status"] == "failed" and "parquet" in broken["error"].lower()
    assert (inbox / "notes.txt").exists() and not list((inbox / ".processing").iterdir())

    gateway = Gateway(config, migrate=False)
    runs = RunLog(gateway.engine).list("drops")
    assert sorted(r.detail["file"] for r in runs) == ["a.csv", "b.jsonl", "c.parquet",
                                                      "d.parquet"]
    assert {r.status for r in runs if r.detail["file"] != "d.parquet"} == {"succeeded"}
    with gateway.engine.connect() as conn:
        traced = conn.execute(text("SELECT COUNT(*) FROM traces WHERE route = 'connector' "
                                   "AND attributes LIKE '%drops%'")).scalar()
    gateway.engine.dispose()
    assert traced == 6  # every row that reached the service (the bad JSON line did not)


def test_a_passing_failure_is_retried_and_row_errors_can_fail_the_file(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "retry.csv").write_text("id,text\n700,seven\n701,eight\n")  # 700: fails once
    (inbox / "strict.jsonl").write_text('{"id": 1, "text": "fine"}\n{"id": 2}\n')
    config = parse_config(_config(tmp_path, inbox, extra=f"""  retrying:
    kind: files
    path: {inbox}
    patterns: ["*.csv"]
    settle_s: 0
    retry_backoff_s: 0
    target: {{service: flaky}}
  strict:
    kind: files
    path: {inbox}
    patterns: ["strict.*"]
    settle_s: 0
    fail_on_row_errors: true
    target: {{service: score}}"""))
    install_python_path(config)

    async def scenario() -> None:
        gateway = Gateway(config)
        await gateway.start()
        try:
            connectors = Connectors(gateway, Invoker(gateway))
            retrying = await connectors.run("retrying", idle_exit_s=0.3)
            assert (retrying.stats.succeeded, retrying.stats.retried) == (2, 1)
            await connectors.run("strict", idle_exit_s=0.3)
        finally:
            await gateway.stop()

    asyncio.run(scenario())
    assert (inbox / "done" / "retry.csv").exists()
    assert (inbox / "failed" / "strict.jsonl").exists()
    summary = orjson.loads((inbox / "failed" / "strict.jsonl.summary.json").read_bytes())
    assert summary["error"] == "1 rows failed" and summary["ok"] == 1


def test_calls_run_as_the_connectors_key(tmp_path: Path) -> None:
    """`api_key`: the key's restrictions apply to every row (a key for another service is
    refused: each row fails as rejected); a key that is not valid stops the connector at start
    with an error naming the setting."""
    from shipyard.errors import ConfigError
    from shipyard.store import create_store_engine, migrate
    from shipyard.store import tenants as store

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "rows.jsonl").write_text('{"id": 1, "text": "a"}\n')
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    store.create_tenant(engine, "acme")
    _, other = store.create_key(engine, tenant_id="acme", name="only-flaky", role="client",
                                services=["flaky"])
    engine.dispose()
    text = _config(tmp_path, inbox).replace("auth: {disabled: true}",
                                            "auth: {api_keys: [{$env: ADMIN_KEY}]}")
    text = text.replace("    target: {service: score}\n",
                        "    target: {service: score}\n    api_key: {$env: CONNECTOR_KEY}\n", 1)
    for key, expect in ((other, "rejected"), ("sk-wrong-" + "x" * 20, "refused")):
        config = parse_config(text, environ={"ADMIN_KEY": "sk-admin-" + "y" * 20,
                                             "CONNECTOR_KEY": key})
        install_python_path(config)

        async def scenario(config: Any = config) -> Any:
            gateway = Gateway(config)
            await gateway.start()
            try:
                return await Connectors(gateway, Invoker(gateway)).run("drops",
                                                                        idle_exit_s=0.3)
            finally:
                await gateway.stop()

        if expect == "rejected":
            connector = asyncio.run(scenario())
            assert (connector.stats.succeeded, connector.stats.failed) == (0, 1)
            [line] = (inbox / "done" / "rows.jsonl.results.jsonl").read_bytes().splitlines()
            error = orjson.loads(line)["error"]
            assert error.startswith("rejected") and "may not call service 'score'" in error
        else:
            with pytest.raises(ConfigError) as caught:
                asyncio.run(scenario())
            assert "connectors.drops.api_key was refused" in caught.value.message


def test_files_through_a_data_pipeline(tmp_path: Path) -> None:
    """`pipeline:` instead of a target: each dropped file runs through `shipyard data` (its
    source replaced by the file), a dataset version is written, and the summary holds the
    pipeline's report (rows in, out, quarantined)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "clean.yaml").write_text("""
name: drops
source: {path: placeholder.csv}
schema:
  columns:
    id: {type: int, required: true, unique: true}
    text: {type: string, required: true}
output: {dir: datasets}
""")
    (inbox / "batch.csv").write_text("id,text\n1,a\n2,b\n2,dup id\n,missing id\n")
    config = parse_config(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{disabled: true}}
connectors:
  cleaned: {{kind: files, path: {inbox}, settle_s: 0, pipeline: {tmp_path}/clean.yaml}}
""")

    async def scenario() -> None:
        gateway = Gateway(config)
        await gateway.start()
        try:
            await Connectors(gateway, Invoker(gateway)).run("cleaned", idle_exit_s=0.3)
        finally:
            await gateway.stop()

    asyncio.run(scenario())
    summary = orjson.loads((inbox / "done" / "batch.csv.summary.json").read_bytes())
    assert summary["status"] == "succeeded"
    rows = summary["pipeline"]["rows"]
    assert rows["in"] == 4 and rows["out"] == 2 and rows["quarantined"] == 2
    assert Path(summary["pipeline"]["path"]).exists() and summary["pipeline"]["version"] == 1


def test_file_drops_from_an_s3_compatible_bucket(tmp_path: Path) -> None:
    """`s3:`: objects under the prefix are taken from a real S3-compatible server on
    127.0.0.1 (moto's), processed, and uploaded with their result files to done/."""
    import boto3
    from moto.server import ThreadedMotoServer

    from conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="drops")
        s3.put_object(Bucket="drops", Key="incoming/a.csv", Body=b"id,text\n1,one two\n")
        s3.put_object(Bucket="drops", Key="incoming/notes.txt", Body=b"not matched")
        s3.put_object(Bucket="drops", Key="incoming/deeper/b.csv", Body=b"id,text\n2,x\n")
        inbox = tmp_path / "staging"
        config = parse_config(_config(tmp_path, inbox).replace(
            "    target: {service: score}\n", f"""    target: {{service: score}}
    s3:
      bucket: drops
      prefix: incoming
      endpoint_url: {endpoint}
      region: us-east-1
      access_key_id: {{$env: S3_KEY}}
      secret_access_key: {{$env: S3_SECRET}}
""", 1), environ={"S3_KEY": "test", "S3_SECRET": "test"})
        install_python_path(config)

        async def scenario() -> Any:
            gateway = Gateway(config)
            await gateway.start()
            try:
                return await Connectors(gateway, Invoker(gateway)).run("drops",
                                                                        idle_exit_s=0.5)
            finally:
                await gateway.stop()

        connector = asyncio.run(scenario())
        assert (connector.stats.processed, connector.stats.succeeded) == (1, 1)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="drops")["Contents"])
        assert keys == ["incoming/deeper/b.csv", "incoming/done/a.csv",
                        "incoming/done/a.csv.results.jsonl", "incoming/done/a.csv.summary.json",
                        "incoming/notes.txt"]
        results = s3.get_object(Bucket="drops", Key="incoming/done/a.csv.results.jsonl")
        assert orjson.loads(results["Body"].read())["output"] == {"id": 1, "words": 2}
        assert not any((inbox / "done").iterdir())  # uploaded, then removed locally
    finally:
        server.stop()


def test_a_draining_gateway_leaves_work_for_later_instead_of_failing_it(
        tmp_path: Path) -> None:
    """While the gateway drains (SIGTERM), calls answer 503: the connector neither retries
    nor fails the rows; the file stays claimed for the next run and the run is interrupted."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "late.csv").write_text("id,text\n1,a\n2,b\n")
    config = parse_config(_config(tmp_path, inbox))
    install_python_path(config)

    async def scenario() -> Any:
        gateway = Gateway(config)
        await gateway.start()
        try:
            gateway.drain()
            return await Connectors(gateway, Invoker(gateway)).run("drops", idle_exit_s=0.3)
        finally:
            await gateway.stop()

    connector = asyncio.run(scenario())
    assert (connector.stats.processed, connector.stats.failed, connector.stats.retried) == (
        0, 0, 0)
    assert (inbox / ".processing" / "late.csv").exists()
    assert not (inbox / "done" / "late.csv").exists()
    assert not (inbox / "failed" / "late.csv").exists()
    gateway = Gateway(config, migrate=False)
    [run] = RunLog(gateway.engine).list("drops")
    gateway.engine.dispose()
    assert run.status == "interrupted"
