"""The lifecycle admin API: versions, aliases, rollouts and evals of each service, and the
zero-downtime reload. Every route is authenticated; every change is audited (by the
registry) and served by this replica at once (the others follow within a controller tick).

| route | scope |
|---|---|
| GET /v1/admin/services/{name}/versions | status:read |
| GET /v1/admin/services/{name}/versions/{version} | status:read |
| POST /v1/admin/services/{name}/versions | deploy |
| POST /v1/admin/services/{name}/promote | deploy |
| POST /v1/admin/services/{name}/rollback | deploy |
| POST /v1/admin/services/{name}/rollouts | deploy |
| GET /v1/admin/services/{name}/evals | status:read |
| GET /v1/admin/models/{alias}/versions | status:read |
| GET /v1/admin/models/{alias}/versions/{version} | status:read |
| POST /v1/admin/models/{alias}/promote | deploy |
| POST /v1/admin/models/{alias}/rollback | deploy |
| POST /v1/admin/models/{alias}/rollouts | deploy |
| POST /v1/admin/reload | config:write |

A model alias's routes act on `model/ALIAS` in the registry, exactly as a service's do.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shipyard.config.lifecycle import RolloutConfig
from shipyard.errors import ConfigError, Conflict, InvalidRequest, NotFound, PermissionDenied
from shipyard.gateway.admin_routes import acting_tenant
from shipyard.gateway.auth import Principal
from shipyard.gateway.http import json_response, read_json
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.lifecycle import registry
from shipyard.lifecycle.aliases import alias_target
from shipyard.lifecycle.artifacts import artifact_dir
from shipyard.security.roles import PLATFORM_TENANT

__all__ = ["lifecycle_routes"]


def _actor(principal: Principal) -> str:
    return f"key:{principal.key_id or 'anonymous'}"


def _int(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"Field '{name}' is {value!r}; it must be a version number "
                             "(1, 2, ...).", param=name)
    return value


class LifecycleRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def _principal(self, request: Request, scope: str) -> Principal:
        principal = await self.gw.authorize(request, scope)
        acting_tenant(principal, request)  # refuses NUL characters in path parameters
        if principal.tenant_id != PLATFORM_TENANT:
            raise PermissionDenied("Services, model aliases and their versions belong to the "
                                   "platform; use a key of the platform tenant ('default').")
        return principal

    def _service(self, request: Request) -> str:
        name = str(request.path_params["name"])
        if name not in self.gw.services:
            known = ", ".join(sorted(self.gw.services)) or "none are configured"
            raise NotFound(f"The service '{name}' does not exist; available services: {known}.",
                           param="name")
        return name

    async def _body(self, request: Request) -> dict[str, Any]:
        if not await request.body():
            return {}
        body, _ = await read_json(request, self.gw.config.server.max_body_bytes)
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object.")
        return body

    async def _after_change(self) -> None:
        await self.gw.lifecycle.refresh()

    async def versions(self, request: Request) -> Response:
        await self._principal(request, "status:read")
        name = self._service(request)
        engine = self.gw.engine
        versions = await asyncio.to_thread(registry.list_versions, engine, name)
        aliases = (await asyncio.to_thread(registry.aliases_of, engine, name)).get(name, {})
        rollouts = await asyncio.to_thread(registry.rollouts_of, engine, name, limit=10)
        return json_response({
            "object": "list", "service": name, "aliases": aliases,
            "serving": self.gw.lifecycle.status().get(name),
            "rollouts": [r.to_dict() for r in rollouts],
            "data": [v.to_dict() for v in versions]})

    async def version(self, request: Request) -> Response:
        await self._principal(request, "status:read")
        name = self._service(request)
        raw = request.path_params["version"]
        if not raw.isdigit():
            raise InvalidRequest(f"Version '{raw}' is not a number.", param="version")
        version = await asyncio.to_thread(registry.get_version, self.gw.engine, name, int(raw))
        return json_response(version.to_dict())

    def _target(self, request: Request) -> tuple[str, str, RolloutConfig]:
        """(what the answer calls it, the registry's name, the rollout policy) of the
        service or model alias a route names."""
        if "alias" in request.path_params:
            alias = self._alias(request)
            return alias, alias_target(alias), self.gw.models[alias].config.rollout
        name = self._service(request)
        return name, name, self.gw.services[name].config.rollout

    def _alias(self, request: Request) -> str:
        alias = str(request.path_params["alias"])
        if alias not in self.gw.models:
            known = ", ".join(sorted(self.gw.models)) or "none are configured"
            raise NotFound(f"The model alias '{alias}' does not exist; available aliases: "
                           f"{known}.", param="alias")
        return alias

    async def model_versions(self, request: Request) -> Response:
        """A model alias's configuration versions (`shipyard.lifecycle.aliases`)."""
        await self._principal(request, "status:read")
        alias = self._alias(request)
        target = alias_target(alias)
        engine = self.gw.engine
        versions = await asyncio.to_thread(registry.list_versions, engine, target)
        aliases = (await asyncio.to_thread(registry.aliases_of, engine, target)).get(target, {})
        rollouts = await asyncio.to_thread(registry.rollouts_of, engine, target, limit=10)
        return json_response({"object": "list", "model": alias, "target": target,
                              "aliases": aliases, "serving": self.gw.models[alias].serving,
                              "status": self.gw.lifecycle.status().get(target),
                              "rollouts": [r.to_dict() for r in rollouts],
                              "data": [v.to_dict() for v in versions]})

    async def model_version(self, request: Request) -> Response:
        await self._principal(request, "status:read")
        alias = self._alias(request)
        raw = request.path_params["version"]
        if not raw.isdigit():
            raise InvalidRequest(f"Version '{raw}' is not a number.", param="version")
        version = await asyncio.to_thread(registry.get_version, self.gw.engine,
                                          alias_target(alias), int(raw))
        return json_response(version.to_dict())

    async def register(self, request: Request) -> Response:
        principal = await self._principal(request, "deploy")
        name = self._service(request)
        body = await self._body(request)
        function, model = body.get("function"), body.get("model")
        if not isinstance(function, str | type(None)) or not isinstance(model, str | type(None)):
            raise InvalidRequest("Fields 'function' and 'model' are strings.")
        path = None
        if model is not None:
            path = self._model_path(model)
        call = body.get("call", self.gw.services[name].config.call)
        if call not in ("predict", "predict_proba"):
            raise InvalidRequest(f"Field 'call' is {call!r}; use predict or predict_proba.",
                                 param="call")
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        version, new = await asyncio.to_thread(
            registry.register_version, self.gw.engine, name, function=function, model=path,
            call=call, artifact_dir=artifact_dir(self.gw.config), actor=_actor(principal),
            meta={"source": "api", **(meta or {})})
        return json_response({**version.to_dict(), "new": new}, status=201 if new else 200)

    def _model_path(self, model: str) -> Path:
        """Model files registered over the API must lie beside the config file or in the
        artifact store: a pickle runs code when loaded, so the API never loads arbitrary
        paths (the CLI, run by someone on the machine, may)."""
        roots = [artifact_dir(self.gw.config).resolve()]
        if self.gw.config_path:
            roots.append(Path(self.gw.config_path).resolve().parent)
        path = Path(model)
        if not path.is_absolute() and self.gw.config_path:
            path = Path(self.gw.config_path).resolve().parent / path
        path = path.resolve()
        if not any(path.is_relative_to(root) for root in roots):
            raise PermissionDenied(f"Field 'model' is '{model}', outside the config's folder "
                                   "and the artifact store; copy the file there or register "
                                   "it with 'shipyard versions register' on the host.",
                                   param="model")
        return path

    async def promote(self, request: Request) -> Response:
        principal = await self._principal(request, "deploy")
        shown, name, _ = self._target(request)
        body = await self._body(request)
        number = _int(body, "version")
        reason = body.get("reason") if isinstance(body.get("reason"), str) else None
        before = await asyncio.to_thread(registry.promote, self.gw.engine, name, number or 0,
                                         actor=_actor(principal), reason=reason)
        await self._after_change()
        return json_response({_kind(request): shown, "stable": number, "previous": before})

    async def rollback(self, request: Request) -> Response:
        principal = await self._principal(request, "deploy")
        shown, name, _ = self._target(request)
        body = await self._body(request)
        to = _int(body, "to", required=False)
        what, stable = await asyncio.to_thread(registry.rollback, self.gw.engine, name,
                                               actor=_actor(principal), to=to,
                                               reason=body.get("reason") if isinstance(
                                                   body.get("reason"), str) else None)
        await self._after_change()
        return json_response({_kind(request): shown, "rolled_back": what, "stable": stable})

    async def start_rollout(self, request: Request) -> Response:
        principal = await self._principal(request, "deploy")
        _, name, policy = self._target(request)
        body = await self._body(request)
        number = _int(body, "version") or 0
        mode = body.get("mode", policy.mode)
        if mode not in ("canary", "shadow"):
            raise InvalidRequest(f"Field 'mode' is {mode!r}; use canary or shadow.",
                                 param="mode")
        share = body.get("share", policy.steps[0])
        if isinstance(share, bool) or not isinstance(share, int | float) or not (
                0 < share <= 100):
            raise InvalidRequest(f"Field 'share' is {share!r}; give a percentage in (0, 100].",
                                 param="share")
        rollout = await asyncio.to_thread(registry.start_rollout, self.gw.engine, name, number,
                                          mode=mode, share=float(share),
                                          actor=_actor(principal))
        await self._after_change()
        return json_response(rollout.to_dict(), status=201)

    async def evals(self, request: Request) -> Response:
        await self._principal(request, "status:read")
        name = self._service(request)
        runs = await asyncio.to_thread(registry.list_evals, self.gw.engine, name)
        for run in runs:
            run["created_at"] = run["created_at"].isoformat()
        return json_response({"object": "list", "data": runs})

    async def reload(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "config:write")
        try:
            result = await self.gw.reload()
        except ConfigError as exc:
            raise Conflict(exc.message) from None
        self.gw.audit(tenant_id=principal.tenant_id, actor=_actor(principal),
                      action="config.reload", target=self.gw.config_path or "config",
                      details={"restart_needed": result["restart_needed"]})
        return json_response(result)


def _kind(request: Request) -> str:
    return "model" if "alias" in request.path_params else "service"


def lifecycle_routes(gateway: Gateway) -> list[ScopedRoute]:
    r = LifecycleRoutes(gateway)
    base = "/v1/admin/services/{name}"
    return [
        ScopedRoute(f"{base}/versions", r.versions, methods=["GET"], scope="status:read"),
        ScopedRoute(f"{base}/versions", r.register, methods=["POST"], scope="deploy"),
        ScopedRoute(f"{base}/versions/{{version}}", r.version, methods=["GET"],
                    scope="status:read"),
        ScopedRoute(f"{base}/promote", r.promote, methods=["POST"], scope="deploy"),
        ScopedRoute(f"{base}/rollback", r.rollback, methods=["POST"], scope="deploy"),
        ScopedRoute(f"{base}/rollouts", r.start_rollout, methods=["POST"], scope="deploy"),
        ScopedRoute(f"{base}/evals", r.evals, methods=["GET"], scope="status:read"),
        ScopedRoute("/v1/admin/models/{alias}/versions", r.model_versions, methods=["GET"],
                    scope="status:read"),
        ScopedRoute("/v1/admin/models/{alias}/versions/{version}", r.model_version,
                    methods=["GET"], scope="status:read"),
        ScopedRoute("/v1/admin/models/{alias}/promote", r.promote, methods=["POST"],
                    scope="deploy"),
        ScopedRoute("/v1/admin/models/{alias}/rollback", r.rollback, methods=["POST"],
                    scope="deploy"),
        ScopedRoute("/v1/admin/models/{alias}/rollouts", r.start_rollout, methods=["POST"],
                    scope="deploy"),
        ScopedRoute("/v1/admin/reload", r.reload, methods=["POST"], scope="config:write"),
    ]
