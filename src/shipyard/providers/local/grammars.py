"""JSON schemas as llama.cpp grammars: llama-cpp-python's converter, plus the number bounds
it leaves out (it emits any integer for `{"type": "integer", "minimum": 1, "maximum": 5}`).

Only the worker process imports this module (it imports llama_cpp).
"""

from __future__ import annotations

import json
import math
from typing import Any

from llama_cpp.llama_grammar import (
    PRIMITIVE_RULES as _PRIMITIVES,
)
from llama_cpp.llama_grammar import (
    RESERVED_NAMES as _RESERVED,
)
from llama_cpp.llama_grammar import (
    SchemaConverter,
    _build_repetition,
)

__all__ = ["schema_to_gbnf"]


class _Converter(SchemaConverter):
    """llama-cpp-python's JSON-schema-to-grammar converter, plus number bounds it ignores:
    an integer range of up to 1,000 values is spelled out, and a non-negative integer or
    number cannot start with a minus sign. Other bounds stay unenforced (documented)."""

    def visit(self, schema: Any, name: str) -> Any:
        if isinstance(schema, dict) and schema.get("type") in ("integer", "number") and (
                "$ref" not in schema and "enum" not in schema and "const" not in schema):
            rule = _bounded_number(schema)
            if rule is not None:
                deps = ["integral-part"] + (["decimal-part"] if "decimal" in rule else [])
                for dep in deps:
                    self._add_primitive(dep, _PRIMITIVES[dep])
                return self._add_rule(name + "-" if name in _RESERVED else name or "root",
                                      rule)
        return super().visit(schema, name)


def _bounded_number(schema: dict[str, Any]) -> str | None:
    def bound(key: str) -> float | None:
        value = schema.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(
            value, bool) else None

    low, high = bound("minimum"), bound("maximum")
    if (ex := bound("exclusiveMinimum")) is not None:
        low = max(low, ex + (1 if schema["type"] == "integer" else 0)) if low is not None else \
            ex + (1 if schema["type"] == "integer" else 0)
    if (ex := bound("exclusiveMaximum")) is not None and schema["type"] == "integer":
        high = min(high, ex - 1) if high is not None else ex - 1
    if schema["type"] == "integer" and low is not None and high is not None:
        first, last = math.ceil(low), math.floor(high)
        if 0 <= last - first < 1000:
            return "(" + " | ".join(f'"{v}"' for v in range(first, last + 1)) + ") space"
    if low is not None and 0 <= low <= 9 and high is None:
        if schema["type"] == "integer":
            if low <= 0:
                return "integral-part space"
            more = _build_repetition("[0-9]", 1, 15)
            return f"([{math.ceil(low)}-9] | [1-9] {more}) space"
        if low == 0:
            return '(integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space'
    return None


def schema_to_gbnf(text: str) -> str:
    """The GBNF grammar of a JSON schema (given as JSON text)."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    schema = converter.resolve_refs(json.loads(text), "stdin")
    converter.visit(schema, "")
    return str(converter.format_grammar())
