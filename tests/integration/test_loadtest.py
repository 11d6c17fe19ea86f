"""`shipyard loadtest` against a real `shipyard sim` process: open loop, honest latency, SLO search.

Rates and durations are small so the file runs in well under a minute on a laptop.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Proc, free_port
from shipyard.errors import ConfigError, UpstreamUnavailable
from shipyard.readiness import SLO, Target, check_target, find_max_rate, parse_profile, run_load

StartSim = Callable[..., Proc]


def sim_stats(sim: Proc) -> dict[str, int]:
    with urllib.request.urlopen(f"{sim.url}/_sim/stats", timeout=5) as response:
        stats: dict[str, int] = json.loads(response.read())
    return stats


def target(sim: Proc, **options: Any) -> Target:
    return Target(url=f"{sim.url}/v1", model="sim-chat", **options)


def cli(*args: str, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`python -m shipyard`); `prelude` runs first in the same process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    clean.update(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    code = (f"{prelude}\nimport sys\nfrom shipyard.cli.main import main\n"
            f"sys.argv = ['shipyard', *{list(args)!r}]\nmain()")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=60)


def test_constant_rate_hits_the_offered_rate_and_counts_what_it_sent(start_sim: StartSim) -> None:
    sim = start_sim("--latency", "20")
    result = run_load(target(sim), parse_profile("100", duration_s=2))
    assert result.scheduled == 200  # uniform: exactly rate x duration
    assert result.sent == result.ok == 200 and result.errors == {}
    assert sim_stats(sim)["requests"] == 200  # the server saw exactly what we sent
    assert result.offered_rate == pytest.approx(100)
    assert result.throughput == pytest.approx(100, rel=0.1)
    assert [b.scheduled for b in result.buckets[:2]] == [100, 100]
    assert 20 <= result.latency.p50_ms < 200
    assert result.latency.p50_ms <= result.latency.p90_ms <= result.latency.p99_ms
    assert result.latency.p99_ms <= result.latency.max_ms


def test_step_ramp_and_poisson_profiles_follow_the_rate_curve() -> None:
    step = parse_profile("step:10,20,40", duration_s=60, step_duration_s=2)
    assert step.duration_s == 6 and len(list(step.schedule())) == 140
    ramp = parse_profile("ramp:50->150", duration_s=4)
    times = list(ramp.schedule())
    assert len(times) == 400 and times == sorted(times)
    assert sum(t < 1 for t in times) < sum(t >= 3 for t in times)  # rate grows
    poisson = parse_profile("200", duration_s=10, arrivals="poisson", seed=7)
    assert len(list(poisson.schedule())) == pytest.approx(2000, rel=0.1)
    assert list(poisson.schedule()) == list(poisson.schedule())  # seeded


def test_error_breakdown_by_status(start_sim: StartSim) -> None:
    sim = start_sim("--error-rate", "500=0.3", "--seed", "3")
    result = run_load(target(sim), parse_profile("200", duration_s=1.5))
    assert set(result.errors) == {"500"}
    assert result.errors["500"] == sim_stats(sim)["chat:500"]  # exact, not estimated
    assert result.error_rate == pytest.approx(0.3, abs=0.07)
    assert result.ok + result.errors["500"] == result.scheduled == 300
    assert sum(b.error_kinds.get("500", 0) for b in result.buckets) == result.errors["500"]


def test_streams_measure_first_token_and_count_cut_streams(start_sim: StartSim) -> None:
    sim = start_sim("--token-delay-ms", "5", "--cut-rate", "0.25", "--cut-after", "2")
    result = run_load(target(sim, stream=True), parse_profile("100", duration_s=1.5))
    assert result.ttft is not None and result.ttft.count >= result.ok
    assert result.ttft.p50_ms < result.latency.p50_ms  # first token before the end
    assert result.errors.get("stream_error", 0) == pytest.approx(0.25 * 150, abs=20)
    assert result.errors["stream_error"] + result.ok == 150


def test_timeouts_and_unreachable_urls_are_kinds_not_crashes(start_sim: StartSim) -> None:
    sim = start_sim("--hang-rate", "0.3", "--hang-s", "1", "--seed", "5")
    result = run_load(target(sim, timeout_s=0.3), parse_profile("50", duration_s=1))
    assert result.errors["timeout"] == pytest.approx(15, abs=9)
    assert result.ok + result.errors["timeout"] == 50
    closed = Target(url=f"http://127.0.0.1:{free_port()}/v1", model="sim-chat")
    dead = run_load(closed, parse_profile("20", duration_s=0.5))
    assert dead.errors == {"connect_error": 10}
    with pytest.raises(UpstreamUnavailable, match="cannot be reached"):
        check_target(closed)


def test_latency_is_not_hidden_by_coordinated_omission(start_sim: StartSim) -> None:
    sim = start_sim("--latency", "300")
    # Only 2 sockets for 20 requests/s at 300 ms each (capacity ~6.7/s): requests queue in
    # the client. A closed-loop tool would report ~300 ms; we time from the scheduled send.
    queued = run_load(target(sim), parse_profile("20", duration_s=1), connections=2)
    assert queued.ok == 20
    assert queued.latency.p50_ms > 1000 and queued.latency.max_ms > 2000
    # With an in-flight cap instead, the requests not sent are counted, not silently delayed.
    capped = run_load(target(sim), parse_profile("50", duration_s=1), max_in_flight=2)
    skipped = capped.errors["client_overload"]
    assert capped.scheduled == 50 and capped.sent + skipped == 50
    assert skipped >= 35 and capped.error_rate >= 0.7
    assert sum(b.error_kinds.get("client_overload", 0) for b in capped.buckets) == skipped


def test_slo_search_finds_a_sane_max_rate(start_sim: StartSim) -> None:
    sim = start_sim("--latency", "50")
    # 4 sockets x 50 ms: the target's capacity is about 80 requests/s.
    seen: list[float] = []
    search = find_max_rate(target(sim), SLO(p99_ms=250, error_rate=0.01), low=40, high=640,
                           step_duration_s=0.7, tolerance=0.25, connections=4, cooldown_s=0.1,
                           on_probe=lambda p: seen.append(p.rate))
    assert search.limited_by == "slo" and search.max_rate is not None
    assert 40 <= search.max_rate <= 160
    assert seen == [p.rate for p in search.probes] and seen[:2] == [40, 80]
    passed = [p.rate for p in search.probes if p.passed]
    failed = [p.rate for p in search.probes if not p.passed]
    assert max(passed) == search.max_rate < min(failed)  # monotone: no pass above a fail
    worst = max(search.probes, key=lambda p: p.rate)
    assert worst.result.latency.p99_ms > 250 > search.probes[0].result.latency.p99_ms
    assert search.best is not None and search.best.rate == search.max_rate


def test_a_run_stops_waiting_once_its_p99_objective_is_certainly_missed(
        start_sim: StartSim) -> None:
    slow = start_sim("--latency", "3000")
    # Every answer takes 3 s; 200 ms after the last send all 10 are in flight, so the p99 is
    # over 200 ms whatever they take: they are not waited for (up to the 30 s timeout).
    result = run_load(target(slow, timeout_s=30), parse_profile("20", duration_s=0.5),
                      slo_p99_ms=200)
    assert result.scheduled == result.sent == result.unfinished == 10
    assert result.ok == 0 and result.errors == {}  # neither answered nor failed
    assert result.latency.count == 10 and result.latency.p99_ms >= 200  # lower bounds
    assert SLO(p99_ms=200).violations(result) == [
        f"p99 {result.latency.p99_ms:.0f} ms >= 200 ms (10 requests still unanswered then, not "
        "waited for)"]
    search = find_max_rate(target(slow, timeout_s=30), SLO(p99_ms=200), low=10, high=20,
                           step_duration_s=0.5, cooldown_s=0.0)
    assert search.limited_by == "low" and search.probes[0].result.unfinished == 5
    # A run that can meet the objective is waited for to the end, as without it.
    fast = start_sim("--latency", "20")
    kept = run_load(target(fast), parse_profile("20", duration_s=0.5), slo_p99_ms=200)
    assert kept.ok == 10 and kept.unfinished == 0


def test_cli_writes_json_and_an_offline_html_report(start_sim: StartSim,
                                                     tmp_path: Path) -> None:
    sim = start_sim("--latency", "10")
    out_json, out_html = tmp_path / "run.json", tmp_path / "run.html"
    result = cli("loadtest", f"{sim.url}/v1", "--model", "sim-chat", "--profile",
                 "step:20,40", "--duration", "2", "--json", str(out_json), "--html",
                 str(out_html), "--slo-p99-ms", "1000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "p99" in result.stdout and "SLO met" in result.stdout
    data = json.loads(out_json.read_text())
    assert data["kind"] == "run" and data["profile"] == "step:20,40"
    assert data["scheduled"] == 60 and data["ok"] == 60  # +1 preflight request not counted
    assert data["latency"]["p99_ms"] > 0 and len(data["buckets"]) >= 2
    page = out_html.read_text()
    assert not re.search(r"<script[^>]+src\s*=\s*[\"']?(https?:)?//", page, re.I)
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js is inline
    assert "Latency by scheduled second" in page


def test_cli_search_report_and_slo_failure_exit(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim("--latency", "200")
    missed = cli("loadtest", f"{sim.url}/v1", "--model", "sim-chat", "--rate", "10",
                 "--duration", "0.5", "--slo-p99-ms", "50", "-q", cwd=tmp_path)
    assert missed.returncode == 3 and "SLO missed" in missed.stdout
    out = tmp_path / "search.json"
    found = cli("loadtest", f"{sim.url}/v1", "--model", "sim-chat", "--find-max-rate",
                "--slo-p99-ms", "100", "--low", "5", "--high", "10", "--step-duration", "0.5",
                "--json", str(out), "-q", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    data = json.loads(out.read_text())
    assert data["kind"] == "search" and data["max_rate"] is None and data["limited_by"] == "low"
    assert "No rate met the SLO" in found.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--profile", "zigzag:1,2"], "--profile is 'zigzag:1,2'; write a rate (100), constant:100"),
    (["--rate", "0"], "--rate is 0; it must be a positive number of requests per second"),
    (["--duration", "-1"], "duration_s (--duration) is -1.0; it must be a positive number"),
])
def test_cli_bad_input_fails_with_a_clear_message(args: list[str], message: str,
                                                  tmp_path: Path) -> None:
    result = cli("loadtest", "http://127.0.0.1:9/v1", "--model", "sim-chat", *args,
                 cwd=tmp_path)
    assert result.returncode == 1
    assert message in " ".join(result.stderr.split()), result.stderr


def test_cli_unreachable_url_and_missing_plotly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    down = cli("loadtest", url, "--model", "sim-chat", "--duration", "1", cwd=tmp_path)
    assert down.returncode == 1
    assert f"The URL '{url}' cannot be reached" in " ".join(down.stderr.split())
    # plotly is an optional extra: without it, --html fails up front with the install line.
    no_plotly = cli("loadtest", url, "--model", "sim-chat", "--html", str(tmp_path / "r.html"),
                    cwd=tmp_path, prelude="import sys; sys.modules['plotly'] = None")
    assert no_plotly.returncode == 1
    assert "pip install 'shipyard[report]'" in " ".join(no_plotly.stderr.split())


def test_api_validation_names_the_field_and_the_fix() -> None:
    for spec, message in [("step:100,abc", "--profile is 'step:100,abc'; write a rate"),
                          ("ramp:50->0", "every rate must be a positive number"),
                          ("constant:1,2", "a constant profile has one rate"),
                          ("ramp:5", "--profile is 'ramp:5'; write a rate"),
                          # `--profile ramp:50->500` unquoted: the shell redirects at '>'
                          ("ramp:50-", "quote the profile: --profile 'ramp:50->500'")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_profile(spec, duration_s=10)
    with pytest.raises(ConfigError, match=re.escape("arrivals (--arrivals) is 'bursty'")):
        parse_profile("10", duration_s=1, arrivals="bursty")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="No model is set; pass --model"):
        Target(url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="must be an http"):
        Target(url="127.0.0.1:9", model="m")
    with pytest.raises(ConfigError, match=r"p99_ms \(--slo-p99-ms\) is 0"):
        SLO(p99_ms=0)


def test_cli_load_tests_a_hosted_service(start_gateway: Callable[..., Proc],
                                         tmp_path: Path) -> None:
    from conftest import API_KEY

    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
services:
  triage:
    function: sample_services:classify
    input_schema: {{type: object, required: [text], properties: {{text: {{type: string}}}}}}
""")
    bodies = tmp_path / "tickets.jsonl"
    bodies.write_text('{"text": "I want a refund"}\n{"text": "Where is my parcel?"}\n')
    out_json, out_html = tmp_path / "svc.json", tmp_path / "svc.html"
    result = cli("loadtest", f"{gateway.url}/v1", "--service", "triage", "--body-file",
                 str(bodies), "--api-key", API_KEY, "--rate", "20", "--duration", "2",
                 "--json", str(out_json), "--html", str(out_html), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "service triage" in result.stdout and "/services/triage/invoke" in result.stdout
    data = json.loads(out_json.read_text())
    assert data["target"] == "service triage" and data["ok"] == 40 and data["errors"] == {}
    assert "service triage" in out_html.read_text()
    missing = cli("loadtest", f"{gateway.url}/v1", "--service", "nope", "--body-file",
                  str(bodies), "--api-key", API_KEY, "--duration", "1", cwd=tmp_path)
    assert missing.returncode == 1 and "service 'nope' does not exist" in missing.stderr
    no_body = cli("loadtest", f"{gateway.url}/v1", "--service", "triage", "--api-key",
                  API_KEY, "--duration", "1", cwd=tmp_path)
    assert no_body.returncode == 1 and "needs an input" in no_body.stderr
