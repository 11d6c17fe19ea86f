"""`shipyard chaos` against real processes: two sims (a faulty primary, a healthy fallback) and a
gateway whose `demo` model falls back from one to the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import API_KEY, REPO, Proc, launch_gateway, launch_sim
from shipyard.readiness.chaos import ChaosReport, run_scenarios

pytestmark = pytest.mark.slow
SIM_TOKEN = "sim-admin-token-1234"


def _config(primary: Proc, backup: Proc, store_url: str) -> str:
    return f"""
store:
  url: {store_url}
traces:
  flush_interval_s: 0.05
auth:
  api_keys:
    - {{$env: SHIPYARD_API_KEY}}
providers:
  primary:
    kind: openai
    base_url: {primary.url}/v1
    timeout_s: 10
    first_byte_timeout_s: 1
    idle_timeout_s: 2
    circuit: {{window_s: 2, min_requests: 5, failure_rate: 0.5, open_s: 1, half_open_probes: 1}}
  secondary:
    kind: openai
    base_url: {backup.url}/v1
    timeout_s: 10
    first_byte_timeout_s: 1
models:
  demo:
    deployments: [{{provider: primary, model: sim-chat}}]
    fallbacks: [backup]
    retry: {{attempts: 2, backoff_base_s: 0.01, backoff_max_s: 0.05}}
  backup:
    provider: secondary
    model: sim-chat
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc, Proc]]:
    """(gateway, faulty primary sim, healthy fallback sim), shared by the tests of this module:
    every scenario starts from a healthy baseline and leaves the sims healthy."""
    folder = tmp_path_factory.mktemp("chaos")
    started: list[Proc] = []
    try:
        primary = launch_sim(folder, "--admin-token", SIM_TOKEN)
        started.append(primary)
        backup = launch_sim(folder)
        started.append(backup)
        gateway = launch_gateway(folder, _config(primary, backup, f"sqlite:///{folder}/s.db"))
        started.append(gateway)
        yield gateway, primary, backup
    finally:
        for proc in reversed(started):
            proc.stop()


def _faults(sim: Proc) -> dict[str, object]:
    request = urllib.request.Request(f"{sim.url}/_sim/faults",
                                     headers={"Authorization": f"Bearer {SIM_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        data: dict[str, object] = json.loads(response.read())
    return data


def test_scenarios_report_success_circuits_and_stream_correctness(
        stack: tuple[Proc, Proc, Proc]) -> None:
    gateway, primary, _ = stack
    report = run_scenarios(gateway.url, API_KEY, "demo", [primary.url],
                           ["errors-30", "outage", "cut-streams"], rate=25, stream_share=0.3,
                           baseline_s=2, fault_s=3, recovery_s=3, settle_s=0.5,
                           sim_admin_token=SIM_TOKEN, seed=7,
                           # Recovery is judged on success here: a loaded CI machine has
                           # latency spikes that a 2x factor over a few-ms baseline would catch.
                           latency_factor=20)
    assert isinstance(report, ChaosReport)
    assert [s.name for s in report.scenarios] == ["errors-30", "outage", "cut-streams"]
    by_name = {s.name: s for s in report.scenarios}
    for result in report.scenarios:
        assert result.skipped is None
        assert [p.name for p in result.phases] == ["baseline", "fault", "recovery"]
        assert 25 * 8 * 0.9 <= sum(p.requests for p in result.phases) <= 25 * 8
        assert result.fault is not None and result.fault.requests == result.phases[1].requests
        assert result.baseline is not None and result.baseline.success_rate == 1.0
        assert result.recovered and result.recovery_time_s is not None
        for phase in result.phases:
            assert phase.status is not None and "error" not in phase.status, phase.status
            deployments = phase.status["models"]["demo"]["deployments"]
            assert set(deployments) == {"primary/sim-chat"}
        assert len(result.timeline) == 8
        assert result.clean_done_after_cut == 0

    # 30% of answers fail upstream; retries and the fallback hide every one of them.
    errors = by_name["errors-30"].fault
    assert errors is not None and errors.success_rate >= 0.99, errors.errors
    # A full outage: the fallback serves, and the primary's circuit opened.
    outage = by_name["outage"]
    assert outage.fault is not None and outage.fault.success_rate >= 0.99, outage.fault.errors
    assert outage.fault.status is not None
    circuit = outage.fault.status["models"]["demo"]["deployments"]["primary/sim-chat"]
    assert circuit["times_opened"] >= 1
    # Cut streams cannot be retried once bytes reached the client: each one must end with an
    # explicit error event, never with a clean [DONE] nor a silent end.
    cut = by_name["cut-streams"].fault
    assert cut is not None
    assert cut.streams.error_event > 0
    assert cut.streams.clean_done_after_cut == 0 and cut.streams.no_done == 0
    assert cut.errors == {"stream_error_event": cut.streams.error_event}
    assert cut.streams.sent == cut.streams.ok + cut.streams.error_event
    # The sim is left healthy.
    assert _faults(primary)["error_rates"] == {} and _faults(primary)["cut_rate"] == 0.0


def test_recovery_phase_ends_once_the_recovery_has_held(stack: tuple[Proc, Proc, Proc]) -> None:
    gateway, primary, _ = stack
    report = run_scenarios(gateway.url, API_KEY, "demo", [primary.url], ["errors-30"],
                           rate=20, baseline_s=1, fault_s=2, recovery_s=20, window_s=0.5,
                           hold_s=1, sim_admin_token=SIM_TOKEN, seed=7, latency_factor=20,
                           stop_when_recovered=True)
    result = report.scenarios[0]
    assert result.recovered and result.recovery_time_s is not None
    recovery = result.phases[-1]
    # It waited for the recovery to hold (1 s of windows after the recovery time), not for
    # all 20 s; the recovery time is the one the whole phase's samples give.
    assert recovery.end_s - recovery.start_s >= result.recovery_time_s + 1
    assert recovery.requests < 20 * 20
    assert any("recovery phase ended" in note for note in result.notes)
    assert _faults(primary)["error_rates"] == {}


def _chaos(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200", SHIPYARD_API_KEY=API_KEY,
               PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "shipyard", "chaos", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_runs_custom_and_hooked_scenarios_and_writes_json(
        stack: tuple[Proc, Proc, Proc], tmp_path: Path) -> None:
    gateway, primary, _ = stack
    marker = tmp_path / "hooks.log"
    out = tmp_path / "chaos.json"
    common = ("--sim", primary.url, "--sim-admin-token", SIM_TOKEN, "--rate", "20",
              "--baseline", "1", "--fault", "1.5", "--recovery", "1.5", "--settle", "0",
              "--latency-factor", "20")
    done = _chaos(gateway.url, *common, "-s", "store-down", "-s", "rate-limited",
                  "--custom", 'bad-gateway={"error_rates": {"502": 0.2}}',
                  "--store-down-cmd", f"echo down >> {marker}",
                  "--store-up-cmd", f"echo up >> {marker}", "--json", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert marker.read_text().split() == ["down", "up"]
    data = json.loads(out.read_text())
    assert data["kind"] == "chaos" and data["model"] == "demo"
    names = [s["name"] for s in data["scenarios"]]
    assert names == ["store-down", "rate-limited", "bad-gateway"]
    for scenario in data["scenarios"]:
        assert scenario["skipped"] is None
        assert [p["name"] for p in scenario["phases"]] == ["baseline", "fault", "recovery"]
        assert scenario["fault"]["success_rate"] >= 0.99, scenario["fault"]["errors"]
    assert data["scenarios"][2]["phases"][1]["faults"] == {"error_rates": {"502": 0.2}}
    for heading in ("Phases", "bad-gateway", "recovery", "Wrote"):
        assert heading in done.stdout

    # Without hooks, store-down is skipped with the reason; no traffic is needed for that.
    skipped = _chaos(gateway.url, *common, "-s", "store-down", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert "needs --store-down-cmd and --store-up-cmd" in skipped.stdout


def test_cli_errors_name_the_option_and_the_fix(stack: tuple[Proc, Proc, Proc],
                                                tmp_path: Path) -> None:
    gateway, primary, _ = stack
    cases = [
        (("-s", "nope"), "--scenario is 'nope', which is not a built-in scenario"),
        (("--custom", "x={not json"), "--custom 'x' has invalid JSON"),
        (("--rate", "0"), "rate (--rate) is 0.0; it must be a positive number"),
        (("--sim-admin-token", "wrong-token"), "refused the admin token (401)"),
        (("--sim", "http://127.0.0.1:1"), "cannot be reached"),
    ]
    for args, message in cases:
        token = () if "--sim-admin-token" in args else ("--sim-admin-token", SIM_TOKEN)
        sim = () if "--sim" in args else ("--sim", primary.url)
        done = _chaos(gateway.url, *sim, *token, *args, cwd=tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr
        assert message in " ".join(done.stderr.split()), done.stderr
