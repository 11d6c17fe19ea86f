"""Durable work across real processes, on SQLite and a real PostgreSQL: two worker processes
compete for the same queue and no item runs twice; a worker killed with SIGKILL in the middle
of an item loses it to another worker once its lease expires, and the item completes once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import FIXTURES, REPO
from shipyard.store import create_store_engine, migrate
from shipyard.work import WorkQueue

SCRIPT = FIXTURES / "work_worker.py"


def spawn(url: str, kind: str, owner: str, lease_s: float, out: Path,
          slow_s: float = 0.0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with out.with_suffix(".log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, str(SCRIPT), url, kind, owner, str(lease_s),
                                 str(out), str(slow_s)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], out: Path, timeout: float) -> None:
    proc.wait(timeout)
    assert proc.returncode == 0, out.with_suffix(".log").read_text()


def lines(path: Path, word: str) -> list[str]:
    if not path.exists():
        return []
    return [line.split()[1] for line in path.read_text().splitlines()
            if line.startswith(word + " ")]


def test_two_worker_processes_never_run_an_item_twice(store_url: str, tmp_path: Path) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    queue = WorkQueue(engine)
    ids = set(queue.enqueue_many("race", ({"n": n} for n in range(300))))
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    workers = [spawn(store_url, "race", f"w{i}", 30, out) for i, out in enumerate(outs)]
    try:
        for proc, out in zip(workers, outs, strict=True):
            finish(proc, out, 180)
        done = [lines(out, "done") for out in outs]
        started = Counter(lines(outs[0], "start") + lines(outs[1], "start"))
        assert sorted(done[0] + done[1]) == sorted(ids)  # every item, each exactly once
        assert set(started.values()) == {1}  # and never started twice either
        assert min(len(d) for d in done) > 0, [len(d) for d in done]  # both took part
        counts = queue.counts(kind="race")
        assert counts["succeeded"] == 300 and counts["queued"] == counts["running"] == 0
        by = Counter(str(i.result["by"]) for i in queue.list_items(
            tenant_id=None, kind="race", limit=1000))
        assert by == Counter({"w0": len(done[0]), "w1": len(done[1])})
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
        engine.dispose()


def test_an_item_of_a_killed_worker_is_reclaimed_and_completes_once(
        store_url: str, tmp_path: Path) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    queue = WorkQueue(engine)
    slow = queue.enqueue("jobs", {"slow": True}, max_attempts=3).item
    quick = [queue.enqueue("jobs", {"n": n}).item.id for n in range(5)]
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    victim = spawn(store_url, "jobs", "victim", 2.0, first, slow_s=120)
    try:
        deadline = time.monotonic() + 60
        while slow.id not in lines(first, "start") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.id in lines(first, "start"), "the first worker never started the item"
        assert queue.get(slow.id, tenant_id=None).status == "running"
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        survivor = spawn(store_url, "jobs", "survivor", 2.0, second)
        finish(survivor, second, 120)
        item = queue.get(slow.id, tenant_id=None)
        assert item.status == "succeeded" and item.attempts == 2
        assert item.result == {"by": "survivor"}
        assert slow.id not in lines(first, "done")  # the killed attempt never finished
        assert lines(second, "done").count(slow.id) == 1
        log = queue.attempts(slow.id)
        assert [a.outcome for a in log] == ["lost", "succeeded"]
        assert log[0].owner == "victim" and log[1].owner == "survivor"
        # The quick items: each completed exactly once in the store. One the victim ran but
        # had not recorded when it was killed ran again (at least once), after a lost lease.
        for item_id in quick:
            outcomes = [a.outcome for a in queue.attempts(item_id)]
            assert queue.get(item_id, tenant_id=None).status == "succeeded"
            assert outcomes.count("succeeded") == 1, outcomes
            ran = (lines(first, "done") + lines(second, "done")).count(item_id)
            assert ran == 1 or outcomes[0] == "lost", (item_id, ran, outcomes)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        engine.dispose()
