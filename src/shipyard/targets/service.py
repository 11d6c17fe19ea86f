"""Hosted Python services as targets: `services.NAME`, served at
`POST /v1/services/NAME/invoke`, through the same chain of stages as a model alias.

The terminal step dispatches to a version (`shipyard.lifecycle`): the router picks stable
or a canary's candidate inside the chain, so limits, guards and PII apply to every version
alike, and a shadow copy goes to a candidate after stable has answered, off the caller's path.
A service is a function (`function:`) or a model file (`model:`, called `predict` or
`predict_proba`).

The input is validated against the declared JSON Schema or pydantic model before the chain
runs (a bad input gets 422 naming the field, the problem and the expected type), and again in
the terminal step when a stage changed it (a PII or guard fix). Sync functions run in the
thread pool and never block the event loop. A function may return a `shipyard.Result` to hand
over the retrieved context its answer is based on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic

from shipyard.config.targets import ServiceConfig
from shipyard.errors import ConfigError, ShipyardError, ValidationFailed
from shipyard.guards.base import Subject
from shipyard.guards.runner import GuardList
from shipyard.guards.stage import GuardStage, strings_of
from shipyard.lifecycle.artifacts import StoredArtifact, artifact_format, file_sha256
from shipyard.lifecycle.serving import (
    Choice,
    LoadedVersion,
    Plan,
    ShadowResult,
    VersionRouter,
    elapsed_ms,
    load_function,
    load_model_version,
    same_answer,
    shadow_context,
)
from shipyard.observe.tracing import new_span_id, record_span, traceparent
from shipyard.pipeline import Call, Invocation, Reply, Target, invocation
from shipyard.providers.loading import import_object
from shipyard.providers.python import call_function
from shipyard.resilience.admission import Admission
from shipyard.sdk import Result

__all__ = ["ServiceTarget"]


class ServiceTarget(Target):
    """A hosted Python function and everything needed to serve it."""

    kind = "service"

    def __init__(self, name: str, config: ServiceConfig, *,
                 base_url: str | None = None) -> None:
        super().__init__(name, self._invoke)
        self.config = config
        self.base_url = base_url  # where the function's own calls reach this gateway
        self.gateway_key = (config.gateway_key.get_secret_value()
                            if config.gateway_key is not None else None)
        self.admission = Admission.from_config(f"Service '{name}'", config.admission)
        self.admissions: list[Admission] = []
        # The version the config names; the registry's stable version replaces it once the
        # gateway has read the store (shipyard.lifecycle.controller).
        self.configured = configured_version(name, config)
        self.router = VersionRouter(name, Plan(self.configured, sticky=config.rollout.sticky,
                                               rules=tuple(config.rollout.rules)))
        # Where the function runs when not in this process (`engine: ray`): set by
        # `shipyard.targets.build`, called with (version, argument) instead of the function.
        self.runner: Callable[[LoadedVersion, Any], Awaitable[Any]] | None = None
        self.model: type[pydantic.BaseModel] | None = None
        self.validator: Any = None
        if config.input_model is not None:
            model = import_object(config.input_model, key=f"services.{name}.input_model")
            if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
                raise ConfigError(f"Config key 'services.{name}.input_model' is "
                                  f"'{config.input_model}', which is not a pydantic model class.")
            self.model = model
        elif config.input_schema is not None:
            # jsonschema (~10 MiB with its dependencies) is loaded only by services that
            # declare a JSON Schema.
            import jsonschema
            from jsonschema.exceptions import SchemaError

            cls = jsonschema.validators.validator_for(config.input_schema)
            try:
                cls.check_schema(config.input_schema)
            except SchemaError as exc:
                raise ConfigError(f"Config key 'services.{name}.input_schema' is not a valid "
                                  f"JSON Schema: {exc.message}.") from None
            self.validator = cls(config.input_schema)

    @property
    def function(self) -> Callable[..., Any]:
        """The callable of the stable version."""
        return self.router.plan.stable.function

    def input_schema(self) -> dict[str, Any] | None:
        if self.model is not None:
            return self.model.model_json_schema()
        return self.config.input_schema

    def validate(self, data: Any) -> Any:
        """Return the function's argument, or raise 422 listing every problem."""
        if self.model is not None:
            try:
                return self.model.model_validate(data)
            except pydantic.ValidationError as exc:
                problems = [_pydantic_problem(e) for e in exc.errors(include_url=False)]
                first = exc.errors(include_url=False)[0]
                raise ValidationFailed(_join(problems), param=_path(first["loc"])) from None
        if self.validator is not None:
            errors = sorted(self.validator.iter_errors(data), key=lambda e: list(e.path))
            if errors:
                problems = [_schema_problem(e) for e in errors[:10]]
                raise ValidationFailed(_join(problems),
                                       param=_path(tuple(errors[0].absolute_path))) from None
        caller = self.router.plan.stable.caller
        if caller is not None:
            caller.check(data)  # a model service's input: `features`, one row or several
        return data

    def returns_context(self) -> bool:
        """Whether the function is declared to return a `shipyard.Result` (with context)."""
        annotation = getattr(self.function, "__annotations__", {}).get("return")
        return annotation is Result or annotation in ("Result", "shipyard.Result",
                                                      "shipyard.sdk.Result")

    async def _invoke(self, call: Call) -> Reply:
        """The terminal step: validate (again, when a stage changed the input), run the
        function under its timeout, and hand back its output and context."""
        ctx = call.ctx
        known = call.validated
        argument = (known[1] if known is not None and known[0] is call.payload
                    else self.validate(call.payload))
        ctx.provider = "python"
        choice = self.router.choose(call)
        ctx.version = choice.version.label
        span_id = new_span_id()
        token = invocation.set(Invocation(
            traceparent(ctx.otel_trace_id, span_id, "01" if ctx.sampled else "00"),
            ctx.request_id, ctx.tenant_id, self.base_url, self.gateway_key))
        started = time.perf_counter()
        error: str | None = None
        try:
            try:
                result = await self._run(choice.version, argument)
            except ShipyardError as exc:
                if choice.fallback is None or exc.status < 500:
                    raise
                # The canary failed: its attempt is recorded against it, stable answers.
                self._canary_failed(call, choice.version, exc, time.perf_counter() - started)
                choice = Choice(choice.fallback)
                ctx.version = choice.version.label
                result = await self._run(choice.version, argument)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            ended = time.perf_counter()
            invocation.reset(token)
            record_span(ctx, "service", started, ended, span_id=span_id, error=error,
                        attributes={"shipyard.service": self.name,
                                    "shipyard.version": choice.version.label})
            ctx.upstream_ms = (ended - started) * 1000.0
        if choice.shadow is not None:
            self._shadow(call, choice, argument, result, ctx.upstream_ms)
        reply = Reply(upstream_ms=ctx.upstream_ms,
                      headers={"x-shipyard-version": choice.version.label})
        if isinstance(result, Result):
            reply.context = [str(c) for c in result.context]
            reply.citations = list(result.citations)
            result = result.output
        if isinstance(result, pydantic.BaseModel):
            result = result.model_dump(mode="json")
        reply.data = result
        return reply


    async def _run(self, version: LoadedVersion, argument: Any) -> Any:
        caller = version.caller
        if caller is not None:
            caller.check(argument)  # 422 for a malformed input, before the model runs
        if self.runner is not None:
            return await self.runner(version, argument)
        return await call_function(version.function, argument,
                                   timeout_s=self.config.timeout_s,
                                   what=f"Service '{self.name}'")

    def _canary_failed(self, call: Call, version: LoadedVersion, exc: ShipyardError,
                       seconds: float) -> None:
        ctx = shadow_context(call.ctx, self.name, version.label, route="canary")
        ctx.status, ctx.error_type, ctx.error_message = (exc.status, type(exc).__name__,
                                                         exc.message[:500])
        ctx.upstream_ms = seconds * 1000.0
        ctx.attributes = {"canary": {"fallback": "stable"}}
        if self.router.on_shadow is not None:
            self.router.on_shadow(ctx, ShadowResult(version.label, error=type(exc).__name__))

    def _shadow(self, call: Call, choice: Choice, argument: Any, stable_output: Any,
                stable_ms: float) -> None:
        """Send a copy of this call to the candidate after stable answered; the caller
        never waits for it. Its output, latency, error and output-guard verdict are recorded
        as a trace of route `shadow`, compared with stable's answer."""
        candidate = choice.shadow
        if candidate is None:
            return
        parent = call.ctx
        guards = next((s.outputs for s in self.stages if isinstance(s, GuardStage)), None)
        payload = call.payload if isinstance(call.payload, dict) else None

        async def copy() -> None:
            ctx = shadow_context(parent, self.name, candidate.label)
            ctx.request_payload = parent.request_payload
            result = ShadowResult(candidate.label)
            started = time.perf_counter()
            try:
                output = await self._run(candidate, argument)
                if isinstance(output, Result):
                    output = output.output
                if isinstance(output, pydantic.BaseModel):
                    output = output.model_dump(mode="json")
                result.output = output
                result.agree = same_answer(output, _plain_output(stable_output))
                ctx.status = 200
            except ShipyardError as exc:
                result.error, result.error_message = type(exc).__name__, exc.message
                ctx.status, ctx.error_type, ctx.error_message = (
                    exc.status, result.error, exc.message[:500])
            result.ms = elapsed_ms(started)
            ctx.upstream_ms = result.ms
            if guards and result.error is None:
                quiet = GuardList(guards.slots, guards.stage, target=self.name)
                outcome = await quiet.run(Subject("\n".join(strings_of(result.output)),
                                                  "output", self.name, request=payload))
                result.guard_action = outcome.action
            ctx.response_payload = result.output
            ctx.attributes = {"shadow": {
                "stable_version": choice.version.label, "agree": result.agree,
                "stable_ms": round(stable_ms, 3), "candidate_ms": round(result.ms, 3),
                "guard": result.guard_action, "error": result.error}}
            if result.guard_action in ("block", "escalate"):
                ctx.attributes["guards"] = [{"guard": "shadow", "action":
                                             result.guard_action}]
            if self.router.on_shadow is not None:
                self.router.on_shadow(ctx, result)

        self.router.shadow(copy)


def _plain_output(value: Any) -> Any:
    if isinstance(value, Result):
        value = value.output
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    return value


def configured_version(name: str, config: ServiceConfig) -> LoadedVersion:
    """The version a service's config names: its function, or its model file (loaded from
    where it lies, hash noted; the registry serves its own content-addressed copy)."""
    if config.model is not None:
        path = Path(config.model)
        key = f"services.{name}.model"
        if not path.is_file():
            raise ConfigError(f"Config key '{key}' is '{config.model}', which is not a file; "
                              "give the path of the model file (relative to the config file).")
        artifact = StoredArtifact(path, file_sha256(path), artifact_format(path, key=key))
        return load_model_version(artifact, config.call, name=name)
    return load_function(config.function or "", key=f"services.{name}.function")


def _path(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def _join(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"Invalid input: {problems[0]}"
    return "Invalid input: " + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))


def _pydantic_problem(error: Any) -> str:
    field = _path(error["loc"])
    if error["type"] == "missing":
        return f"field '{field}' is required but missing."
    if error["type"] == "extra_forbidden":
        return f"field '{field}' is not allowed; remove it."
    value = error.get("input")
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    message = str(error["msg"]).replace("Input should be", "it should be")
    return f"field '{field}' is {shown}; {message[:1].lower()}{message[1:]}."


def _schema_problem(error: Any) -> str:
    field = _path(tuple(error.absolute_path))
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else error.message
        target = f"{field}.{missing}" if field != "(body)" else missing
        return f"field '{target}' is required but missing."
    if error.validator == "additionalProperties":
        return f"{error.message} at '{field}'; remove the extra field(s)."
    value = error.instance
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    expected = error.validator_value
    if error.validator == "type":
        return f"field '{field}' is {shown}; expected type {expected}."
    if error.validator == "enum":
        return f"field '{field}' is {shown}; expected one of {expected}."
    return f"field '{field}' is {shown}; {error.message} (rule '{error.validator}')."
