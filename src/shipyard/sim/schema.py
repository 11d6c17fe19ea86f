"""Values that match a JSON Schema, drawn deterministically: the sim's structured output.

The simulated model answers `response_format: json_schema` and tool calls with a value drawn
from the schema, so clients that parse the answer (the openai SDK's `parse()`, pydantic
models) get something they accept. Covered: `type` (also a list of types), `enum`, `const`,
`anyOf`/`oneOf`/`allOf`, local `$ref` (`#`, `#/$defs/...`, `#/definitions/...`),
`properties`/`required`/`additionalProperties`/`minProperties`, `items`/`prefixItems`/
`minItems`/`maxItems`/`uniqueItems`, string `format`s (date-time, date, time, email, uuid,
uri, hostname, ipv4, ipv6), `minLength`/`maxLength`, and numbers with `minimum`/`maximum`
(exclusive too) and `multipleOf`. Not covered: `pattern` (a plain string is drawn).

Recursive schemas end by taking the shortest branch once the value is deep; a schema that asks
for an absurd size (`minItems: 10**9`) is refused with `SchemaTooLarge` instead of allocated.

>>> import random
>>> draw({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3,
...       "maximum": 3}}, "required": ["n"]}, random.Random(1))
{'n': 3}
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_VALUES", "SchemaTooLarge", "draw"]

MAX_VALUES = 10_000          # values (scalars, items, properties) one answer may hold
MAX_STRING = 100_000         # characters of one string
_SHALLOW_DEPTH = 6           # past this, take the shortest branch (ends recursion)
_HARD_DEPTH = 48             # a schema that cannot end by then is refused
_WORDS = ("ship", "harbor", "anchor", "sail", "tide", "crew", "deck", "mast", "cargo",
          "route", "port", "signal", "ledger", "orbit", "lantern", "compass", "beacon")
_TYPES = ("string", "integer", "number", "boolean", "object", "array", "null")


class SchemaTooLarge(ValueError):
    """The schema cannot be answered within the sim's bounds; `pointer` says where."""

    def __init__(self, message: str, pointer: str) -> None:
        super().__init__(message)
        self.pointer = pointer


def draw(schema: Any, rng: random.Random) -> Any:
    """A value valid against `schema` (best effort for `pattern` and `not`)."""
    return _Drawer(schema, rng).value(schema, "", 0)


class _Drawer:
    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.budget = MAX_VALUES

    # -- helpers ----------------------------------------------------------------------------
    def _spend(self, count: int, pointer: str) -> None:
        self.budget -= count
        if self.budget < 0:
            raise SchemaTooLarge(
                f"the schema asks for more than {MAX_VALUES} values (at '{pointer or '/'}'); "
                "the simulated model answers at most that many", pointer)

    def _resolve(self, ref: str, pointer: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaTooLarge(f"'$ref' {ref!r} at '{pointer or '/'}' is not local; only "
                                 "references inside the schema ('#/$defs/...') are followed",
                                 pointer)
        node = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaTooLarge(f"'$ref' {ref!r} at '{pointer or '/'}' points nowhere",
                                     pointer)
        return node

    def _merge_all_of(self, schema: dict[str, Any], pointer: str, depth: int) -> dict[str, Any]:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for i, part in enumerate(schema.get("allOf") or []):
            part = self._deref(part, f"{pointer}/allOf/{i}", depth)
            if not isinstance(part, dict):
                continue
            for key, value in part.items():
                if key == "properties" and isinstance(value, dict):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []),
                                                             *value]))
                elif key in ("minimum", "minLength", "minItems", "exclusiveMinimum"):
                    merged[key] = max(merged.get(key, value), value)
                elif key in ("maximum", "maxLength", "maxItems", "exclusiveMaximum"):
                    merged[key] = min(merged.get(key, value), value)
                else:
                    merged.setdefault(key, value)
        return merged

    def _deref(self, schema: Any, pointer: str, depth: int) -> Any:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            seen += 1
            if seen > _HARD_DEPTH:
                raise SchemaTooLarge(f"'$ref' at '{pointer or '/'}' loops without an end",
                                     pointer)
            target = self._resolve(schema["$ref"], pointer)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if isinstance(target, dict) and siblings else target
        return schema

    # -- values -----------------------------------------------------------------------------
    def value(self, schema: Any, pointer: str, depth: int) -> Any:
        if depth > _HARD_DEPTH:
            raise SchemaTooLarge(
                f"the schema nests deeper than {_HARD_DEPTH} levels at '{pointer}' and has no "
                "shorter branch (a recursive property that is always required?)", pointer)
        self._spend(1, pointer)
        schema = self._deref(schema, pointer, depth)
        if schema is True or schema == {}:
            return self._words(1, 3)
        if schema is False or not isinstance(schema, dict):
            raise SchemaTooLarge(f"no value matches the schema at '{pointer or '/'}'", pointer)
        if "allOf" in schema:
            schema = self._merge_all_of(schema, pointer, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                index = self._pick_branch(options, pointer, depth)
                branch = self._deref(options[index], f"{pointer}/{key}/{index}", depth)
                merged = {**rest, **branch} if isinstance(branch, dict) else branch
                return self.value(merged, f"{pointer}/{key}/{index}", depth)
        kind = self._type_of(schema, depth)
        if kind == "object":
            return self._object(schema, pointer, depth)
        if kind == "array":
            return self._array(schema, pointer, depth)
        if kind == "string":
            return self._string(schema, pointer)
        if kind == "integer":
            return self._integer(schema, pointer)
        if kind == "number":
            return self._number(schema, pointer)
        if kind == "boolean":
            return self.rng.random() < 0.5
        return None

    def _pick_branch(self, options: list[Any], pointer: str, depth: int) -> int:
        if depth < _SHALLOW_DEPTH:
            return self.rng.randrange(len(options))
        # Deep: prefer a branch that ends (null or a scalar) so recursion stops.
        for i, option in enumerate(options):
            option = self._deref(option, pointer, depth)
            if isinstance(option, dict) and self._type_of(option, depth) not in (
                    "object", "array") and "anyOf" not in option and "oneOf" not in option:
                return i
        return 0

    def _type_of(self, schema: dict[str, Any], depth: int) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            kinds = [t for t in declared if t in _TYPES]
            if not kinds:
                return "null"
            if depth >= _SHALLOW_DEPTH and "null" in kinds:
                return "null"
            solid = [t for t in kinds if t != "null"]
            # Mostly a real value; sometimes null when it is allowed, like a model would.
            if solid and (len(solid) == len(kinds) or self.rng.random() < 0.8):
                return str(self.rng.choice(solid))
            return "null"
        if isinstance(declared, str):
            return declared
        if "properties" in schema or "required" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema or "minItems" in schema:
            return "array"
        if "minimum" in schema or "maximum" in schema or "multipleOf" in schema:
            return "number"
        return "string"

    def _object(self, schema: dict[str, Any], pointer: str, depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        out: dict[str, Any] = {}
        deep = depth >= _SHALLOW_DEPTH
        for name, sub in properties.items():
            if name in required or not deep:
                out[name] = self.value(sub, f"{pointer}/properties/{name}", depth + 1)
        extra = schema.get("additionalProperties", True)
        for name in required:
            if name not in out:
                sub = extra if isinstance(extra, dict) else {}
                out[name] = self.value(sub, f"{pointer}/required/{name}", depth + 1)
        minimum = schema.get("minProperties")
        if isinstance(minimum, int) and minimum > len(out):
            if minimum > MAX_VALUES:
                raise SchemaTooLarge(f"'minProperties' is {minimum} at '{pointer or '/'}'; the "
                                     f"simulated model answers at most {MAX_VALUES} values",
                                     pointer)
            sub = extra if isinstance(extra, dict) else {}
            i = 0
            while len(out) < minimum:
                key = f"{self.rng.choice(_WORDS)}_{i}"
                i += 1
                if key not in out:
                    out[key] = self.value(sub, f"{pointer}/additionalProperties", depth + 1)
        return out

    def _array(self, schema: dict[str, Any], pointer: str, depth: int) -> list[Any]:
        low = _int(schema.get("minItems"), 0)
        high = _int(schema.get("maxItems"), None)
        if low > MAX_VALUES:
            raise SchemaTooLarge(f"'minItems' is {low} at '{pointer or '/'}'; the simulated "
                                 f"model answers at most {MAX_VALUES} values", pointer)
        given = schema.get("prefixItems")
        prefix: list[Any] = given if isinstance(given, list) else []
        items = schema.get("items", {})
        if depth >= _SHALLOW_DEPTH:
            count = max(low, len(prefix) if items is False else 0)
        else:
            top = low + 3 if high is None else min(high, low + 3)
            count = self.rng.randint(max(low, 1 if top >= 1 else 0), max(low, top))
        if items is False:
            count = min(count, len(prefix))
        out: list[Any] = []
        unique = bool(schema.get("uniqueItems"))
        attempts = 0
        while len(out) < count and attempts < count * 4 + 8:
            attempts += 1
            i = len(out)
            sub = prefix[i] if i < len(prefix) else items
            item = self.value(sub, f"{pointer}/items/{i}", depth + 1)
            if unique and item in out:
                continue
            out.append(item)
        return out

    def _string(self, schema: dict[str, Any], pointer: str) -> str:
        low = _int(schema.get("minLength"), 0)
        high = _int(schema.get("maxLength"), None)
        if low > MAX_STRING:
            raise SchemaTooLarge(f"'minLength' is {low} at '{pointer or '/'}'; the simulated "
                                 f"model writes strings of at most {MAX_STRING} characters",
                                 pointer)
        make = _FORMATS.get(str(schema.get("format")))
        text = make(self.rng) if make is not None else self._words(1, 4)
        while len(text) < low:
            text += " " + self._words(1, 3)
        if high is not None and len(text) > high:
            text = text[:high]
        return text.ljust(low, "x")

    def _integer(self, schema: dict[str, Any], pointer: str) -> int:
        low, high = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            first = math.ceil(low / step)
            last = math.floor(high / step)
            if first > last:
                raise SchemaTooLarge(f"no multiple of {step} lies between {low} and {high} at "
                                     f"'{pointer or '/'}'", pointer)
            return int(self.rng.randint(first, last) * step)
        if low > high:
            raise SchemaTooLarge(f"the bounds at '{pointer or '/'}' leave no integer", pointer)
        return self.rng.randint(int(low), int(high))

    def _number(self, schema: dict[str, Any], pointer: str) -> float | int:
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            low, high = _bounds(schema, integer=False)
            first, last = math.ceil(low / step), math.floor(high / step)
            if first > last:
                raise SchemaTooLarge(f"no multiple of {step} lies between {low} and {high} at "
                                     f"'{pointer or '/'}'", pointer)
            return self.rng.randint(first, last) * step
        low, high = _bounds(schema, integer=False)
        if low > high:
            raise SchemaTooLarge(f"the bounds at '{pointer or '/'}' leave no number", pointer)
        value = round(self.rng.uniform(low, high), 2)
        exclusive_low = schema.get("exclusiveMinimum")
        exclusive_high = schema.get("exclusiveMaximum")
        if not low <= value <= high or (
                isinstance(exclusive_low, int | float) and value <= exclusive_low) or (
                isinstance(exclusive_high, int | float) and value >= exclusive_high):
            value = (low + high) / 2
        return value

    def _words(self, low: int, high: int) -> str:
        return " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randint(low, high)))


def _int(value: Any, default: int | None) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else default


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float, float]:
    def num(key: str) -> float | None:
        value = schema.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(
            value, bool) else None

    low, high = num("minimum"), num("maximum")
    ex_low, ex_high = num("exclusiveMinimum"), num("exclusiveMaximum")
    nudge = 1.0 if integer else 0.01
    if ex_low is not None:
        low = max(low, ex_low + nudge) if low is not None else ex_low + nudge
    if ex_high is not None:
        high = min(high, ex_high - nudge) if high is not None else ex_high - nudge
    if low is None and high is None:
        low, high = 0.0, 100.0
    elif low is None:
        low = min(0.0, high - 100.0) if high is not None else 0.0
    elif high is None:
        high = max(low + 100.0, 100.0)
    if integer:
        return float(math.ceil(low)), float(math.floor(high))  # type: ignore[arg-type]
    return float(low), float(high)  # type: ignore[arg-type]


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2020, 2026):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date": _date,
    "time": _time,
    "date-time": lambda rng: f"{_date(rng)}T{_time(rng)}",
    "email": lambda rng: f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}@example.com",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "uri": lambda rng: f"https://example.com/{rng.choice(_WORDS)}/{rng.randint(1, 999)}",
    "hostname": lambda rng: f"{rng.choice(_WORDS)}.example.com",
    "ipv4": lambda rng: ".".join(str(rng.randint(1, 254)) for _ in range(4)),
    "ipv6": lambda rng: ":".join(f"{rng.getrandbits(16):x}" for _ in range(8)),
    "duration": lambda rng: f"PT{rng.randint(1, 59)}M",
}
