"""Durable jobs over HTTP: invoke any target asynchronously, poll, cancel, retry.

```
POST /v1/services/{name}/jobs      body: the service's input (as for /invoke)
POST /v1/models/{model}/jobs       body: a chat, completion or embedding request
POST /v1/jobs                      {"endpoint": "/v1/chat/completions", "body": {...}, ...}
GET  /v1/jobs                      this tenant's jobs, newest first (?status=&target=)
GET  /v1/jobs/{job_id}             poll one (?wait=SECONDS waits for it to finish)
POST /v1/jobs/{job_id}/cancel      cancel it (queued: now; running: within a third of a lease)
POST /v1/jobs/{job_id}/retry       run a dead, cancelled or succeeded job again
```

A job is validated when it is created (the target exists, the key may use it, the body has
the right shape: a 4xx at once rather than a dead job later) and answered with 202 and its
id; a worker then sends it through the target's full chain (`shipyard.gateway.invoke`).
`Idempotency-Key` on creation returns the job the key first created.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import (
    AuthenticationFailed,
    InvalidJSON,
    InvalidRequest,
    ModelNotFound,
    NotFound,
)
from shipyard.gateway.admin_routes import acting_tenant, store_param
from shipyard.gateway.auth import Principal
from shipyard.gateway.http import error_response, json_response, read_body
from shipyard.gateway.idempotent import begin, in_progress
from shipyard.gateway.invoke import Invocation, Invoker
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.gateway.validation import validate_chat, validate_completion, validate_embeddings
from shipyard.jobs import JobRequest, Outcome
from shipyard.jobs.batches import batch_endpoint
from shipyard.jobs.jobs import TargetType
from shipyard.resilience.admission import BATCH
from shipyard.work.idempotency import HEADER

__all__ = ["attach_runners", "job_routes"]

_WAIT_MAX_S = 60.0
_STORED_KEY_ID = re.compile(r"^[0-9a-f]{12}$")  # shipyard.store.tenants.create_key


def attach_runners(gw: Gateway) -> None:
    """Run jobs and batches from this process's worker, through the targets' chains."""
    if not gw.config.jobs.enabled:
        return
    invoker = Invoker(gw)

    async def run(request: JobRequest) -> Outcome:
        refused = await _key_refused(gw, request.principal)
        if refused is not None:
            return Invocation(refused.status, refused.to_dict(), dict(refused.headers))
        return await invoker.run(
            request.principal, request.endpoint, request.body, route=request.route,  # type: ignore[arg-type]
            service=request.target if request.endpoint == "invoke" else None,
            request_id=request.request_id, priority=BATCH, deadline_s=request.timeout_s)

    targets = [("model", alias) for alias in gw.models] + [
        ("service", name) for name in gw.services]
    gw.jobs.attach(gw.worker, run=run, targets=targets, stopping=lambda: gw.draining)
    gw.batches.attach(gw.worker, run=run, stopping=lambda: gw.draining)


async def _key_refused(gw: Gateway, principal: Principal) -> AuthenticationFailed | None:
    """A job runs with its creator's key: one revoked or expired since is refused (the job
    is dead-lettered with the reason, as the key's own request would be refused)."""
    keys, key_id = gw.auth.keys, principal.key_id
    if keys is None or key_id is None or not _STORED_KEY_ID.match(key_id):
        return None  # a static key from the config, or an OIDC token: nothing stored to check
    record = await keys.get(key_id)
    status = "deleted" if record is None else record.status()
    if status == "active":
        return None
    return AuthenticationFailed(f"The API key {record.prefix if record else key_id} that created "
                                f"this work is {status}; create it again with an active key.")


def _number(request: Request, name: str, kind: type[int] | type[float]) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise InvalidRequest(f"Query parameter '{name}' is {raw!r}; it must be a number.",
                             param=name) from None


class JobRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def _body(self, request: Request) -> tuple[bytes, Any]:
        raw = await read_body(request, self.gw.config.server.max_body_bytes)
        try:
            return raw, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(f"The request body is not valid JSON ({exc.msg} at position "
                              f"{exc.pos}); send a JSON object.") from None

    def _check(self, principal: Principal, target_type: TargetType, target: str,
               endpoint: str, body: Any) -> None:
        """What a synchronous request would be refused for before its chain runs."""
        gw = self.gw
        if target_type == "service":
            service = gw.services.get(target)
            if service is None:
                known = ", ".join(sorted(gw.services)) or "none are configured"
                raise NotFound(f"The service '{target}' does not exist; available services: "
                               f"{known} (see GET /v1/services).", param="name")
            principal.may_use_service(target)
            service.validate(body)
            return
        model = gw.models.get(target)
        if model is None:
            known = ", ".join(sorted(gw.models)) or "none are configured"
            raise ModelNotFound(f"The model '{target}' does not exist; available models: "
                                f"{known} (see GET /v1/models).", param="model")
        wanted = "embedding" if endpoint == "embeddings" else "chat"
        if model.config.type != wanted:
            raise InvalidRequest(f"The model '{target}' is a {model.config.type} model; "
                                 f"'/v1/{endpoint}' jobs need a {wanted} model.",
                                 param="model", code="wrong_model_type")
        principal.may_use_model(target)
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.", param="body")
        if body.get("stream"):
            raise InvalidRequest("'stream' is not available for jobs (the answer is stored); "
                                 "leave it out.", param="stream")
        bounds = gw.config.server.bounds
        if endpoint == "embeddings":
            validate_embeddings(body, bounds)
        elif endpoint == "completions":
            validate_completion(body, bounds)
        else:
            validate_chat(body, bounds)

    async def _submit(self, request: Request, principal: Principal, raw: bytes, *,
                      target_type: TargetType, target: str, endpoint: str, body: Any,
                      options: dict[str, Any]) -> Response:
        gw = self.gw
        gw.refuse_if_draining()
        self._check(principal, target_type, target, endpoint, body)
        key = request.headers.get(HEADER)
        job_id: str | None = None
        if key is not None:
            decision = await begin(gw, request, principal.tenant_id, key, raw)
            if decision.action == "replay" and decision.record.job_id:
                job = await asyncio.to_thread(gw.jobs.get, decision.record.job_id,
                                              tenant_id=principal.tenant_id)
                return json_response(job.public(), headers={"idempotent-replayed": "true",
                                                            "location": f"/v1/jobs/{job.id}"})
            if decision.action != "proceed":
                return error_response(in_progress(key))
        try:
            job = await asyncio.to_thread(
                gw.jobs.create, principal, target_type=target_type, target=target,
                endpoint=endpoint, body=body, timeout_s=options.get("timeout_s"),
                max_attempts=options.get("max_attempts"), metadata=options.get("metadata"),
                job_id=job_id)
        except BaseException:
            if key is not None:
                await asyncio.to_thread(gw.idempotency.abandon, tenant_id=principal.tenant_id,
                                        scope=f"{request.method} {request.url.path}", key=key)
            raise
        if key is not None:
            await asyncio.to_thread(gw.idempotency.attach_job, tenant_id=principal.tenant_id,
                                    scope=f"{request.method} {request.url.path}", key=key,
                                    job_id=job.id)
        return json_response(job.public(), status=202, headers={"location": f"/v1/jobs/{job.id}"})

    def _options(self, request: Request) -> dict[str, Any]:
        return {"timeout_s": _number(request, "timeout_s", float),
                "max_attempts": _number(request, "max_attempts", int)}

    async def for_service(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        raw, body = await self._body(request)
        return await self._submit(request, principal, raw, target_type="service",
                                  target=request.path_params["name"], endpoint="invoke",
                                  body=body, options=self._options(request))

    async def for_model(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        alias = request.path_params["model"]
        raw, body = await self._body(request)
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object (a chat, completion "
                                 "or embedding request).", param="body")
        body = {**body, "model": body.get("model", alias)}
        if body["model"] != alias:
            raise InvalidRequest(f"The body names model '{body['model']}' but the path names "
                                 f"'{alias}'; leave 'model' out or make them match.",
                                 param="model")
        model = self.gw.models.get(alias)
        endpoint = "embeddings" if model is not None and model.config.type == "embedding" else (
            "completions" if "prompt" in body and "messages" not in body else
            "chat/completions")
        return await self._submit(request, principal, raw, target_type="model", target=alias,
                                  endpoint=endpoint, body=body, options=self._options(request))

    async def create(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        raw, spec = await self._body(request)
        if not isinstance(spec, dict):
            raise InvalidRequest('The request body must be a JSON object such as {"endpoint": '
                                 '"/v1/chat/completions", "body": {...}}.', param="body")
        path = spec.get("endpoint")
        if not isinstance(path, str):
            raise InvalidRequest("'endpoint' is missing; name what the job calls, e.g. "
                                 "/v1/chat/completions or /v1/services/NAME/invoke.",
                                 param="endpoint")
        endpoint, service = batch_endpoint(path)
        body = spec.get("body")
        if service is None and not (isinstance(body, dict) and isinstance(body.get("model"),
                                                                           str)):
            raise InvalidRequest("'body.model' is missing; name the model alias the job "
                                 "calls.", param="body.model")
        target = service or str(body["model"])  # type: ignore[index]
        options = {k: spec.get(k) for k in ("timeout_s", "max_attempts", "metadata")}
        for name in ("timeout_s", "max_attempts"):
            if options[name] is not None and (isinstance(options[name], bool) or not
                                              isinstance(options[name], int | float)):
                raise InvalidRequest(f"'{name}' must be a number.", param=name)
        return await self._submit(request, principal, raw,
                                  target_type="service" if service else "model",
                                  target=target, endpoint=endpoint, body=body,
                                  options=options)

    async def list_jobs(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        tenant = acting_tenant(principal, request)
        limit = _number(request, "limit", int) or 20
        if not 1 <= limit <= 100:
            raise InvalidRequest(f"Query parameter 'limit' is {limit}; use 1 to 100.",
                                 param="limit")
        jobs, more = await asyncio.to_thread(
            self.gw.jobs.list, tenant_id=tenant, status=store_param(request, "status"),
            target=store_param(request, "target"), limit=limit,
            after=store_param(request, "after"))
        data = [j.public() for j in jobs]
        return json_response({"object": "list", "data": data,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None, "has_more": more})

    async def get_job(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        tenant = acting_tenant(principal, request)
        job_id = request.path_params["job_id"]
        wait = _number(request, "wait", float) or 0.0
        if not 0 <= wait <= _WAIT_MAX_S:
            raise InvalidRequest(f"Query parameter 'wait' is {wait:g}; use 0 to "
                                 f"{_WAIT_MAX_S:g} seconds.", param="wait")
        deadline = time.monotonic() + wait
        while True:
            job = await asyncio.to_thread(self.gw.jobs.get, job_id, tenant_id=tenant)
            if job.item.finished or time.monotonic() >= deadline:
                return json_response(job.public())
            await asyncio.sleep(0.2)

    async def cancel(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        tenant = acting_tenant(principal, request)
        job = await asyncio.to_thread(self.gw.jobs.cancel, request.path_params["job_id"],
                                      tenant_id=tenant)
        return json_response(job.public())

    async def retry(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "inference")
        tenant = acting_tenant(principal, request)
        job = await asyncio.to_thread(self.gw.jobs.retry, request.path_params["job_id"],
                                      tenant_id=tenant)
        return json_response(job.public(), status=202)


def job_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = JobRoutes(gateway)
    return [
        ScopedRoute("/v1/services/{name}/jobs", routes.for_service, methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/models/{model}/jobs", routes.for_model, methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/jobs", routes.create, methods=["POST"], scope="inference"),
        ScopedRoute("/v1/jobs", routes.list_jobs, methods=["GET"], scope="inference"),
        ScopedRoute("/v1/jobs/{job_id}", routes.get_job, methods=["GET"], scope="inference"),
        ScopedRoute("/v1/jobs/{job_id}/cancel", routes.cancel, methods=["POST"],
                    scope="inference"),
        ScopedRoute("/v1/jobs/{job_id}/retry", routes.retry, methods=["POST"],
                    scope="inference"),
    ]
