"""Versions, canary and shadow rollouts, automatic rollback, reloads under load, evals and
retraining — through real `shipyard serve` processes, the real CLI, and real scikit-learn
models trained on sklearn's bundled breast-cancer data (`load_breast_cancer`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import pytest
from aiohttp import web
from sklearn.datasets import load_breast_cancer
from sqlalchemy import insert, select

from conftest import API_KEY, FIXTURES, REPO, Proc
from conftest import launch_gateway as _launch_gateway
from shipyard.store import create_store_engine, migrate, tenants
from shipyard.store.tables import audit_log, drift_results, lifecycle_events, rollouts, traces

sys.path.insert(0, str(FIXTURES))
from lifecycle_models import FEATURES, write_models

sys.path.insert(0, str(REPO / "tests" / "integration"))
from local_servers import ThreadServer

pytestmark = pytest.mark.slow
X, Y = load_breast_cancer(return_X_y=True)


def _config(folder: Path, *, model: str = "v1.joblib", rollout: str = "", extra: str = "",
            service_extra: str = "") -> str:
    return f"""
store: {{url: "sqlite:///{folder}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
traces: {{flush_interval_s: 0.2}}
lifecycle: {{tick_s: 1, lease_s: 1}}
{extra}
services:
  cancer:
    model: {folder / model}
    capture: full
    rollout:
{rollout or '''      steps: [20, 50, 100]
      step_s: 2
      window_s: 60
      min_samples: 15
      gates: {latency_p95_ratio: 10}'''}
{service_extra}
"""


def launch_gateway(folder: Path, config: str, *, env: dict[str, str] | None = None) -> Proc:
    # Model services import scikit-learn before they listen: slow on a busy machine.
    return _launch_gateway(folder, config, env=env, timeout=120.0)


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    clean.update(NO_COLOR="1", TERM="dumb", COLUMNS="200", SHIPYARD_API_KEY=API_KEY,
                 PYTHONPATH=os.pathsep.join([str(FIXTURES), str(REPO / "src")]), **(env or {}))
    return subprocess.run([sys.executable, "-m", "shipyard", *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=timeout)


def invoke(url: str, row: list[float], *, conversation: str | None = None
           ) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    if conversation:
        headers["x-shipyard-conversation"] = conversation
    request = urllib.request.Request(f"{url}/v1/services/cancer/invoke",
                                     data=json.dumps({"features": row}).encode(),
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class Load:
    """Steady client load in threads; counts every answer by status and version."""

    def __init__(self, url: str, *, threads: int = 2, pause_s: float = 0.005) -> None:
        self.url = url
        self.pause_s = pause_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}
        self.versions: dict[str, int] = {}
        self.failures: list[str] = []
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def _run(self, worker: int) -> None:
        i = worker
        while not self.stop.is_set():
            try:
                status, body, headers = invoke(self.url, X[i % len(X)].tolist(),
                                               conversation=f"w{worker}-{i}")
            except OSError as exc:  # a refused or reset connection is a failure too
                status, body, headers = 0, {"error": str(exc)}, {}
            with self.lock:
                self.sent += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
                version = headers.get("x-shipyard-version", "")
                self.versions[version] = self.versions.get(version, 0) + 1
                if status != 200:
                    self.failures.append(f"{status}: {body}")
            i += len(self.threads)
            time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def events(engine: Any, kind: str | None = None) -> list[Any]:
    query = select(lifecycle_events).order_by(lifecycle_events.c.seq)
    if kind is not None:
        query = query.where(lifecycle_events.c.event == kind)
    with engine.connect() as connection:
        return list(connection.execute(query))


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    return write_models(tmp_path)


@pytest.fixture
def gateways() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


class Hooks(ThreadServer):
    """A webhook receiver for the rollback alert."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        super().__init__(app)

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.Response(text="ok")


def test_canary_rolls_back_a_failing_version_and_promotes_a_good_one(
        tmp_path: Path, models: dict[str, Path], gateways: list[Proc]) -> None:
    with Hooks() as hooks:
        config = _config(tmp_path, extra=f"""alerts:
  channels:
    - {{name: oncall, kind: webhook, url: "{hooks.url}/hook", backoff_s: 0.05}}""")
        gateway = launch_gateway(tmp_path, config)
        gateways.append(gateway)
        config_file = gateway.extra["config"]
        engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
        listed = cli("versions", "list", "cancer", "--json", "-c", str(config_file),
                     cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["aliases"] == {"stable": 1}
        status, body, headers = invoke(gateway.url, X[0].tolist())
        assert status == 200 and headers["x-shipyard-version"] == "1"
        assert body["output"]["prediction"] == int(joblib.load(models["v1"]).predict(X[:1])[0])

        with Load(gateway.url) as load:
            time.sleep(1)
            # v2 raises on about half of its inputs: the canary must roll it back.
            registered = cli("versions", "register", "cancer", "--model", str(models["flaky"]),
                             "-c", str(config_file), cwd=tmp_path)
            assert registered.returncode == 0 and "version 2" in registered.stdout
            started = cli("versions", "rollout", "cancer", "2", "-c", str(config_file),
                          cwd=tmp_path)
            assert started.returncode == 0, started.stderr
            began = time.monotonic()
            rolled = wait_for(lambda: events(engine, "rolled_back"), 60, "the rollback")
            took = time.monotonic() - began
            time.sleep(1.5)
        assert load.failures == [], load.failures[:5]  # no caller saw the candidate fail
        assert load.versions.get("2", 0) > 0  # the canary did answer some requests
        details = json.loads(rolled[0].details)
        assert "error_rate" in details["reason"], details
        assert took < 30, took
        with engine.connect() as connection:
            failed = connection.execute(select(traces.c.status).where(
                traces.c.route == "canary", traces.c.version == "2")).all()
            actions = {r.action for r in connection.execute(select(audit_log.c.action))}
        assert failed and all(r.status == 500 for r in failed)
        assert {"version.register", "rollout.start", "rollout.rollback"} <= actions
        wait_for(lambda: hooks.received, 15, "the rollback alert")
        alert = hooks.received[0]
        assert alert["alert"]["key"] == "rollback:cancer" and "error_rate" in alert[
            "alert"]["detail"]

        # A good v3 through the admin API: steps 20% → 50% → 100%, then promoted.
        made = admin(gateway.url, "POST", "/v1/admin/services/cancer/versions",
                     {"model": str(models["v2"])})
        assert made["version"] == 3 and made["new"] is True
        with Load(gateway.url) as load:
            admin(gateway.url, "POST", "/v1/admin/services/cancer/rollouts", {"version": 3})
            wait_for(lambda: events(engine, "promoted")[-1].version == 3, 90, "promotion")
            time.sleep(1.5)
        assert load.failures == [], load.failures[:5]
        steps = [json.loads(e.details)["share"] for e in events(engine, "step")]
        assert steps == [50.0, 100.0], steps
        listing = admin(gateway.url, "GET", "/v1/admin/services/cancer/versions")
        assert listing["aliases"] == {"stable": 3}
        with engine.connect() as connection:
            states = [r.state for r in connection.execute(
                select(rollouts.c.state).order_by(rollouts.c.started_at))]
        assert states == ["rolled_back", "promoted"]
        status, body, headers = invoke(gateway.url, X[5].tolist())
        assert headers["x-shipyard-version"] == "3"
        # Feedback carries the version that answered.
        time.sleep(1)
        given = admin(gateway.url, "POST", "/v1/feedback", {"trace_id": body["id"],
                                                            "label": "1", "score": 1})
        assert given["version"] == "3", given
        history = cli("versions", "history", "cancer", "-c", str(config_file), cwd=tmp_path)
        assert "rolled_back" in history.stdout and "every gate passed" in history.stdout
        _versions_page_in_chromium(gateway.url, engine)
        engine.dispose()


def _versions_page_in_chromium(url: str, engine: Any) -> None:
    """The versions page explains the rollback and draws the per-version charts."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    _, secret = tenants.create_key(engine, tenant_id="default", name="viewer", role="viewer")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith(url) else None)
            page.goto(f"{url}/ui/login")
            page.fill("input[name=key]", secret)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/ui")
            page.goto(f"{url}/ui/versions")
            assert "cancer" in page.inner_text("#versions-table")
            page.goto(f"{url}/ui/versions/cancer?range=1h")
            page.wait_for_selector("div.plot[data-rendered=true] svg", timeout=20_000)
            assert page.locator("div.plot[data-rendered=true] svg.main-svg").count() >= 3
            assert "Stable: v3" in page.inner_text("#serving")
            history = page.inner_text("#history")
            assert "gate failed: error_rate" in history and "every gate passed" in history
            assert "rolled_back" in page.inner_text("#rollouts")
            assert outside == [], outside
        finally:
            browser.close()


def test_shadow_answers_from_stable_and_records_the_candidate(
        tmp_path: Path, models: dict[str, Path], gateways: list[Proc]) -> None:
    gateway = launch_gateway(tmp_path, _config(tmp_path, rollout="""      mode: shadow
      auto: false
      min_samples: 10"""))
    gateways.append(gateway)
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    cli("versions", "register", "cancer", "--model", str(models["worse"]), "-c",
        str(gateway.extra["config"]), cwd=tmp_path)
    started = cli("versions", "rollout", "cancer", "2", "-c", str(gateway.extra["config"]),
                  cwd=tmp_path)
    assert "as shadow" in started.stdout, started.stderr
    time.sleep(2)  # one controller tick
    stable = joblib.load(models["v1"])
    n = 60
    for i in range(n):
        status, body, headers = invoke(gateway.url, X[i].tolist(), conversation=f"c{i}")
        assert status == 200 and headers["x-shipyard-version"] == "1"
        assert body["output"]["prediction"] == int(stable.predict(X[i:i + 1])[0])
    def shadows() -> list[Any]:
        with engine.connect() as connection:
            return list(connection.execute(select(traces.c.version, traces.c.attributes,
                                                  traces.c.upstream_ms).where(
                traces.c.route == "shadow")))
    found = wait_for(lambda: len(shadows()) >= n and shadows(), 20, "shadow traces")
    assert {r.version for r in found} == {"2"}
    compared = [json.loads(r.attributes)["shadow"] for r in found]
    assert all(c["stable_version"] == "1" for c in compared)
    disagree = sum(1 for c in compared if c["agree"] is False)
    assert disagree >= 0.9 * n  # the inverted model disagrees with stable almost always
    assert all(r.upstream_ms is not None for r in found)
    # The gate check compares them (auto: false, so it only reports).
    time.sleep(2)
    listing = admin(gateway.url, "GET", "/v1/admin/services/cancer/versions")
    check = listing["rollouts"][0]["last_check"]
    assert check["candidate"]["requests"] >= n and check["stable"]["requests"] >= n
    assert listing["aliases"]["stable"] == 1
    engine.dispose()


def test_reloads_and_version_swaps_under_load_fail_no_request(
        tmp_path: Path, models: dict[str, Path], gateways: list[Proc]) -> None:
    gateway = launch_gateway(tmp_path, _config(tmp_path))
    gateways.append(gateway)
    config_file: Path = gateway.extra["config"]
    original = config_file.read_text()
    cli("versions", "register", "cancer", "--model", str(models["v2"]), "-c",
        str(config_file), cwd=tmp_path)
    with Load(gateway.url, threads=3) as load:
        for i in range(10):
            # A config change (timeout and description) reloaded without downtime ...
            config_file.write_text(original.replace(
                "    capture: full", f"    capture: full\n    timeout_s: {30 + i}\n"
                f"    description: reload {i}"))
            done = cli("reload", "--url", gateway.url, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert "cancer v" in done.stdout
            # ... and the serving version swapped, alternating 2 and 1.
            promoted = cli("versions", "promote", "cancer", str(2 - i % 2), "-c",
                           str(config_file), cwd=tmp_path)
            assert promoted.returncode == 0, promoted.stderr
            time.sleep(0.4)
        time.sleep(1.5)
    assert load.failures == [], load.failures[:5]
    assert load.sent > 100 and set(load.versions) == {"1", "2"}, load.versions
    services = admin(gateway.url, "GET", "/v1/services")["data"]
    assert services[0]["description"] == "reload 9"

    # A config whose model cannot load is refused; the running one keeps serving.
    config_file.write_text(original.replace(str(tmp_path / "v1.joblib"),
                                            str(tmp_path / "missing.joblib")))
    refused = cli("reload", "--url", gateway.url, cwd=tmp_path)
    assert refused.returncode == 1
    assert "missing.joblib" in refused.stderr and "not a file" in refused.stderr
    assert invoke(gateway.url, X[0].tolist())[0] == 200

    # SIGHUP: a new model file in the config becomes a new version, served without downtime.
    config_file.write_text(original.replace(str(tmp_path / "v1.joblib"),
                                            str(tmp_path / "worse.joblib")))
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: invoke(gateway.url, X[0].tolist())[2].get("x-shipyard-version") == "3",
             30, "the version the new config names")


def test_eval_gates_exit_codes_and_the_html_report_in_chromium(
        tmp_path: Path, models: dict[str, Path]) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text(_config(tmp_path))
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    for name in ("v1", "worse", "v2"):
        done = cli("versions", "register", "cancer", "--model", str(models[name]), "-c",
                   str(config), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert cli("versions", "promote", "cancer", "1", "-c", str(config),
               cwd=tmp_path).returncode == 0
    holdout = tmp_path / "holdout.csv"
    holdout.write_text(",".join([*FEATURES, "label"]) + "\n" + "\n".join(
        ",".join([*map(str, row), str(label)]) for row, label in zip(
            X[400:].tolist(), Y[400:].tolist(), strict=True)) + "\n")
    features = ",".join(FEATURES)
    worse = cli("eval", "cancer", "--dataset", str(holdout), "--features", features,
                "--version", "2", "--gate", "accuracy>=0.9", "--gate", "f1>=stable-0.01",
                "-c", str(config), cwd=tmp_path)
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "gate failed" in worse.stderr and "accuracy" in worse.stderr
    report = tmp_path / "report.html"
    good = cli("eval", "cancer", "--dataset", str(holdout), "--features", features,
               "--version", "3", "--gate", "accuracy>=0.9", "--html", str(report),
               "--json", str(tmp_path / "result.json"), "-c", str(config), cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["candidate"]["accuracy"] >= 0.9 and result["baseline_version"] == 1
    assert 0.5 < result["candidate"]["roc_auc"] <= 1.0 and "ece" in result["candidate"]
    broken = cli("eval", "cancer", "--dataset", str(tmp_path / "nope.csv"), "-c", str(config),
                 cwd=tmp_path)
    assert broken.returncode == 2 and "does not exist" in broken.stderr
    with engine.connect() as connection:
        stored = list(connection.execute(select(lifecycle_events.c.version).where(
            lifecycle_events.c.event == "eval")))
    assert sorted(r.version for r in stored) == [2, 3]
    engine.dispose()

    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_selector("div.plotly svg.main-svg", timeout=20_000)
            assert page.locator("div.js-plotly-plot").count() >= 3  # metrics, ROC, calibration
            text = page.inner_text("body")
            assert "ROC curve" in text or page.locator("text=ROC curve").count() > 0
            assert "Gates passed" in text
            assert errors == []
            assert all(u.startswith("file://") for u in requested), requested
        finally:
            browser.close()


def test_retraining_driven_by_drift_resumes_after_a_crash(
        tmp_path: Path, models: dict[str, Path], gateways: list[Proc]) -> None:
    base = tmp_path / "base.csv"
    base.write_text(",".join([*FEATURES, "label"]) + "\n" + "\n".join(
        ",".join([*map(str, row), str(label)]) for row, label in zip(
            X[:80].tolist(), Y[:80].tolist(), strict=True)) + "\n")
    holdout = tmp_path / "holdout.csv"
    holdout.write_text(",".join([*FEATURES, "label"]) + "\n" + "\n".join(
        ",".join([*map(str, row), str(label)]) for row, label in zip(
            X[470:].tolist(), Y[470:].tolist(), strict=True)) + "\n")
    joblib.dump(joblib.load(models["v1"]), tmp_path / "v1.joblib")
    marker = tmp_path / "crash-once"
    marker.write_text("die during training")
    features = ", ".join(FEATURES)
    config = _config(tmp_path, rollout="""      steps: [50, 100]
      step_s: 1
      min_samples: 10
      gates: {latency_p95_ratio: 10}""", extra="""drift:
  enabled: false
  checks:
    inputs: {service: cancer, columns: [status]}""", service_extra=f"""    retrain:
      function: lifecycle_models:train
      data: {base}
      eval_data: {holdout}
      features: [{features}]
      on_drift: inputs
      gate: {{accuracy: -0.05}}""")
    env = {"LIFECYCLE_CRASH_MARKER": str(marker)}
    gateway = launch_gateway(tmp_path, config, env=env)
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db")
    # Production traffic with labelled feedback.
    ids = []
    for i in range(100, 300):
        status, body, _ = invoke(gateway.url, X[i].tolist(), conversation=f"p{i}")
        assert status == 200
        ids.append((body["id"], int(Y[i])))
    time.sleep(1.5)
    for trace_id, label in ids:
        admin(gateway.url, "POST", "/v1/feedback", {"trace_id": trace_id, "label": str(label)})
    # A drift result starts the job; training kills the gateway (exit 3) mid-job.
    with engine.begin() as connection:
        connection.execute(insert(drift_results).values(
            id="d" * 32, check_name="inputs", tenant_id="default", service="cancer",
            at=datetime.now(UTC), current_rows=200, dataset_drift=True, share=1.0,
            drifted=1, tested=1, details="{}"))
    assert gateway.process.wait(60) == 3
    assert not marker.exists()
    # Restarted, the gateway's controller resumes the abandoned job from its step.
    gateway = launch_gateway(tmp_path, config, env=env)
    gateways.append(gateway)
    with Load(gateway.url) as load:
        wait_for(lambda: events(engine, "promoted") and events(engine, "promoted")[-1].version
                 == 2, 120, "the retrained version promoted")
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    collected = events(engine, "retrain_collect")
    assert len(collected) == 1  # the step done before the crash was not run again
    result = json.loads(collected[0].details)["result"]
    assert result["feedback"] == 200 and result["base"] == 80
    assert result["rows"] <= 280  # duplicates removed by shipyard data
    trained = events(engine, "retrain_train")
    assert len(trained) == 1
    started = events(engine, "retrain_started")
    assert json.loads(started[0].details)["trigger"] == "drift:inputs"
    assert events(engine, "retrain_done")
    evaluated = json.loads(events(engine, "retrain_evaluate")[0].details)["result"]
    assert evaluated["passed"] is True and evaluated["accuracy"] >= evaluated[
        "stable_accuracy"] - 0.05
    engine.dispose()
