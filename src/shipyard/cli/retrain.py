"""`shipyard retrain` (run or resume a service's retraining job) and `shipyard reload`."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.markup import escape

from shipyard.cli.common import console, fail, open_store, resolve_config
from shipyard.cli.keys import actor
from shipyard.config import env
from shipyard.errors import ShipyardError

__all__ = ["reload", "retrain"]


def retrain(
    service: Annotated[str, typer.Argument(help="The model service to retrain.")],
    resume: Annotated[bool, typer.Option(
        help="Resume the service's job whose process died (its completed steps are kept).")
    ] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the service's jobs.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shipyard.yaml (default: $SHIPYARD_CONFIG or ./shipyard.yaml).")
    ] = None,
) -> None:
    """Retrain a model service: its base data plus labelled feedback and reviewed
    escalations → your training function → a new version → eval against stable → canary.

    Each step is recorded as it completes; a job killed mid-way resumes with --resume.
    Example: shipyard retrain cancer
    """
    from shipyard.config.loader import install_python_path
    from shipyard.lifecycle.retrain import RetrainJob, claim_stale, list_jobs, start_job

    _, cfg = resolve_config(config)
    install_python_path(cfg)
    found = cfg.services.get(service)
    if found is None or found.retrain is None:
        raise fail(f"Service '{service}' has no 'retrain:' section in the config; add one "
                   "(see docs/lifecycle.md).")
    engine = open_store(config, None, migrate=True)
    try:
        if list_:
            for job in list_jobs(engine, service):
                console.print(f"{job['created_at']:%Y-%m-%d %H:%M:%S}  {job['id']}  "
                              f"{job['state']:<8} step {job['step']:<9} {job['trigger']}"
                              + (f"  {escape(job['error'][:120])}" if job["error"] else ""),
                              highlight=False)
            return
        holder = actor()
        if resume:
            # A job whose holder stopped beating for the controller's lease is abandoned.
            taken = claim_stale(engine, holder=holder, stale_s=cfg.lifecycle.lease_s,
                                target=service)
            if not taken:
                raise fail(f"'{service}' has no abandoned job to resume (a job still beating "
                           f"is running elsewhere; see 'shipyard retrain {service} --list').")
            job_id = taken[0]
            console.print(f"Resuming job {job_id}.")
        else:
            job_id = start_job(engine, service, "manual", holder=holder)
            console.print(f"Started job {job_id}.")

        def progress(step: str, state: str) -> None:
            console.print(f"  {step}: {state}", highlight=False)

        job = RetrainJob(engine, cfg, job_id, holder=holder, progress=progress).run()
    except ShipyardError as exc:
        raise fail(exc) from None
    finally:
        engine.dispose()
    steps = job["steps"]
    version = steps.get("register", {}).get("version")
    evaluated = steps.get("evaluate", {})
    console.print(f"Job {job['id']} {job['state']}: version {version}"
                  + (f", accuracy {evaluated['accuracy']:.4f} (stable "
                     f"{evaluated.get('stable_accuracy') or 0:.4f})"
                     if evaluated.get("accuracy") is not None else "")
                  + (f", {steps['rollout'].get('mode')} started" if "rollout" in steps
                     and steps["rollout"].get("mode") else "")
                  + (f"; held back: {'; '.join(evaluated['failures'])}"
                     if evaluated.get("failures") else ""), highlight=False)


def reload(
    url: Annotated[str, typer.Option(help="Base URL of the gateway.")] = "http://127.0.0.1:8000",
    api_key_env: Annotated[str, typer.Option(
        help="Environment variable holding an API key with scope config:write.")
    ] = "SHIPYARD_API_KEY",
) -> None:
    """Reload a running gateway's config without downtime (as SIGHUP does): the new
    targets load beside the running ones and swap in one step; if anything fails to load,
    the running config keeps serving and the error is printed.

    Example: shipyard reload --url http://127.0.0.1:8000
    """
    api_key = env.get(api_key_env)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(url.rstrip("/") + "/v1/admin/reload", data=b"",
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            result = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            body = orjson.loads(exc.read() or b"{}")
        message = body.get("error", {}).get("message", exc.code)
        raise fail(f"The gateway at '{url}' refused the reload ({exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise fail(f"--url is '{url}', which cannot be reached ({exc}); is 'shipyard serve' "
                   "running there?") from None
    services = ", ".join(f"{k} v{v}" for k, v in result.get("services", {}).items())
    console.print(f"Reloaded: {services or 'no services'}.", highlight=False)
    if result.get("restart_needed"):
        console.print("[yellow]Changed sections that need a restart to apply:[/] "
                      + ", ".join(result["restart_needed"]))
