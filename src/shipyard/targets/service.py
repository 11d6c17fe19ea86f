"""Hosted Python services as targets: `services.NAME`, served at
`POST /v1/services/NAME/invoke`, through the same chain of stages as a model alias.

The input is validated against the declared JSON Schema or pydantic model before the chain
runs (a bad input gets 422 naming the field, the problem and the expected type), and again in
the terminal step when a stage changed it (a PII or guard fix). Sync functions run in the
thread pool and never block the event loop. A function may return a `shipyard.Result` to hand
over the retrieved context its answer is based on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pydantic

from shipyard.config.targets import ServiceConfig
from shipyard.errors import ConfigError, ValidationFailed
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
        self.function: Callable[..., Any] = import_object(
            config.function, key=f"services.{name}.function")
        if not callable(self.function):
            raise ConfigError(f"Config key 'services.{name}.function' is "
                              f"'{config.function}', which is not callable.")
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
        span_id = new_span_id()
        token = invocation.set(Invocation(
            traceparent(ctx.otel_trace_id, span_id, "01" if ctx.sampled else "00"),
            ctx.request_id, ctx.tenant_id, self.base_url, self.gateway_key))
        started = time.perf_counter()
        error: str | None = None
        try:
            result = await call_function(self.function, argument,
                                         timeout_s=self.config.timeout_s,
                                         what=f"Service '{self.name}'")
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            ended = time.perf_counter()
            invocation.reset(token)
            record_span(ctx, "service", started, ended, span_id=span_id, error=error,
                        attributes={"shipyard.service": self.name})
            ctx.upstream_ms = (ended - started) * 1000.0
        reply = Reply(upstream_ms=ctx.upstream_ms)
        if isinstance(result, Result):
            reply.context = [str(c) for c in result.context]
            reply.citations = list(result.citations)
            result = result.output
        if isinstance(result, pydantic.BaseModel):
            result = result.model_dump(mode="json")
        reply.data = result
        return reply


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
