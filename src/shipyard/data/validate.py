"""Schema validation: coerce each value to its declared type and run the declared checks.

A row that fails any check yields `Violation`s (rule, column, value, reason) and goes to the
quarantine; nothing is dropped silently.

>>> from shipyard.data.config import ColumnSpec, SchemaSpec
>>> v = RowValidator(SchemaSpec(columns={"age": ColumnSpec(type="int", min=0)}), nulls=("",))
>>> v.validate({"age": "-3"})[1][0].reason
'-3 is below the minimum 0'
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from shipyard.data.config import ColumnSpec, RuleSpec, SchemaSpec
from shipyard.errors import ConfigError

__all__ = ["CompiledRule", "RowValidator", "Violation", "coerce", "compile_rule"]

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt}
_RULE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a row was quarantined."""

    rule: str
    column: str | None
    value: Any
    reason: str


class _CoerceError(ValueError):
    pass


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def coerce(value: Any, kind: str) -> Any:
    """`value` as `kind` (string, int, float, bool, date, datetime); ValueError says why not."""
    if kind == "string":
        return value if isinstance(value, str) else str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise _CoerceError(f"{_show(value)} is a boolean, not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
            raise _CoerceError(f"{_show(value)} is not a whole number")
        text = str(value).strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise _CoerceError(f"{_show(value)} is not an integer") from None
            if number.is_integer():
                return int(number)
            raise _CoerceError(f"{_show(value)} is not a whole number") from None
    if kind == "float":
        if isinstance(value, bool):
            raise _CoerceError(f"{_show(value)} is a boolean, not a number")
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(str(value).strip().replace("_", ""))
        except ValueError:
            raise _CoerceError(f"{_show(value)} is not a number") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise _CoerceError(f"{_show(value)} is not a boolean (true/false, yes/no, 1/0)")
    if kind == "date":
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value).strip()[:10])
        except ValueError:
            raise _CoerceError(f"{_show(value)} is not an ISO date (YYYY-MM-DD)") from None
    if kind == "datetime":
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            parsed = datetime(value.year, value.month, value.day)
        else:
            try:
                parsed = datetime.fromisoformat(str(value).strip())
            except ValueError:
                raise _CoerceError(f"{_show(value)} is not an ISO date-time") from None
        # One time zone in the output: naive values are taken as UTC.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise ConfigError(f"Column type '{kind}' is unknown; use string, int, float, bool, date or "
                      "datetime.")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    left: str
    op: str
    right_column: str | None
    right_value: Any
    when: CompiledRule | None

    def holds(self, row: dict[str, Any]) -> bool | None:
        """True/False, or None when a side is missing (a null never fails a rule)."""
        left = row.get(self.left)
        right = row.get(self.right_column) if self.right_column else self.right_value
        if left is None or right is None:
            return None
        try:
            return _OPS[self.op](left, right)
        except TypeError:
            return False


def _literal(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise ValueError(text)


def compile_rule(spec: RuleSpec, columns: Iterable[str]) -> CompiledRule:
    """Parse '<column> <op> <column or literal>' (e.g. 'end >= start', "status != 'x'")."""
    names = set(columns)

    def parse(expr: str, where: str) -> CompiledRule:
        match = _RULE.match(expr)
        if not match or match[1] not in names:
            raise ConfigError(
                f"Rule '{spec.name}' {where} is {expr!r}; write '<column> <op> <column or "
                f"literal>' with op one of < <= > >= == != and a declared column "
                f"({', '.join(sorted(names))}).")
        right = match[3]
        if right in names:
            return CompiledRule(spec.name, match[1], match[2], right, None, None)
        try:
            value = _literal(right)
        except ValueError:
            raise ConfigError(f"Rule '{spec.name}' {where} compares with {right!r}, which is "
                              "neither a declared column nor a literal (quote strings: "
                              "'text').") from None
        return CompiledRule(spec.name, match[1], match[2], None, value, None)

    rule = parse(spec.check, "check")
    if spec.when:
        cond = parse(spec.when, "when")
        rule = CompiledRule(rule.name, rule.left, rule.op, rule.right_column, rule.right_value,
                            cond)
    return rule


class RowValidator:
    """Coerces and checks one row at a time against a `SchemaSpec` (uniqueness is global and
    checked by the pipeline).
    """

    def __init__(self, schema: SchemaSpec, *, nulls: Iterable[str]) -> None:
        self.schema = schema
        self.nulls = frozenset(nulls)
        self.columns: dict[str, ColumnSpec] = dict(schema.columns)
        self.regexes = {name: re.compile(spec.regex) for name, spec in self.columns.items()
                       if spec.regex}
        self.enums = {name: frozenset(spec.enum) for name, spec in self.columns.items()
                      if spec.enum is not None}
        self.rules = [compile_rule(r, self.columns) for r in schema.rules]

    def validate(self, row: dict[str, Any]) -> tuple[dict[str, Any], list[Violation]]:
        """The typed row (declared columns, in order) and its violations (empty when valid)."""
        out: dict[str, Any] = {}
        problems: list[Violation] = []
        nulls = self.nulls
        for name, spec in self.columns.items():
            value = row.get(spec.source or name)
            if isinstance(value, str) and value in nulls:
                value = None
            if value is None:
                out[name] = None
                if spec.required:
                    problems.append(Violation("required", name, None,
                                              f"'{name}' is required but missing or empty"))
                continue
            try:
                typed = coerce(value, spec.type)
            except _CoerceError as exc:
                problems.append(Violation("type", name, value, str(exc)))
                out[name] = None
                continue
            out[name] = typed
            problem = self._check(name, spec, typed)
            if problem is not None:
                problems.append(problem)
        if not problems:
            for rule in self.rules:
                if rule.when is not None and not rule.when.holds(out):
                    continue
                if rule.holds(out) is False:
                    right = rule.right_column or _show(rule.right_value)
                    problems.append(Violation(
                        rule.name, rule.left, out.get(rule.left),
                        f"rule '{rule.name}' failed: {rule.left} ({_show(out.get(rule.left))}) "
                        f"{rule.op} {right}" + (f" ({_show(out.get(rule.right_column))})"
                                                if rule.right_column else "")))
        return out, problems

    def _check(self, name: str, spec: ColumnSpec, value: Any) -> Violation | None:
        if spec.min is not None and isinstance(value, int | float) and value < spec.min:
            return Violation("min", name, value, f"{_show(value)} is below the minimum "
                                                 f"{spec.min:g}")
        if spec.max is not None and isinstance(value, int | float) and value > spec.max:
            return Violation("max", name, value, f"{_show(value)} is above the maximum "
                                                 f"{spec.max:g}")
        if isinstance(value, str):
            if spec.min_length is not None and len(value) < spec.min_length:
                return Violation("min_length", name, value,
                                 f"length {len(value)} is below the minimum {spec.min_length}")
            if spec.max_length is not None and len(value) > spec.max_length:
                return Violation("max_length", name, value,
                                 f"length {len(value)} is above the maximum {spec.max_length}")
        enum = self.enums.get(name)
        if enum is not None and value not in enum:
            allowed = ", ".join(_show(v) for v in sorted(enum, key=str)[:10])
            return Violation("enum", name, value, f"{_show(value)} is not one of {allowed}")
        regex = self.regexes.get(name)
        if regex is not None and not regex.fullmatch(str(value)):
            return Violation("regex", name, value,
                             f"{_show(value)} does not match {regex.pattern!r}")
        return None
