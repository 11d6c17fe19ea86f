"""Arrow fast paths for a batch's cleaning and validation, column by column.

The row-at-a-time code (`TextCleaner.clean`, `coerce`, `RowValidator`) defines what the
pipeline does; this module only finds, in C over whole columns, the values for which that code
would change nothing or whose result Arrow computes identically, and hands every other value to
it. A value is never judged differently here than there:

- cleaning: an ASCII value with no double space, tab, form feed or edge whitespace is already
  clean; only the others go through `TextCleaner.clean`;
- types: plain integers (`-12`), plain decimals (`3.5`, `1e5`), ISO dates (`2026-03-01`) and
  ISO date-times without fraction or offset (`2026-03-01T10:00:00`, also with a space) are cast
  by Arrow, with a round trip that sends impossible dates ("2026-02-30") back to `coerce`;
  anything else (`1_000`, `12.0` for an int, offsets, booleans) goes through `coerce`;
- checks: `min`, `max`, `min_length`, `max_length` and `enum` (when its members have the
  column's type) are Arrow comparisons; `regex` and cross-field rules run in Python on the rows
  that passed everything else.

A row any check rejects is re-validated by `RowValidator.validate`, so its violations and
reasons are exactly the row-at-a-time ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shipyard.data.config import ColumnSpec
from shipyard.data.validate import RowValidator, coerce

__all__ = ["ColumnResult", "clean_column", "string_array", "validate_columns"]

# Python's str.strip() removes these from ASCII text; RE2 spells them out.
_EDGE = r"[\t\n\v\f\r \x1c-\x1f]"
_NEEDS_CLEAN = f"  |[\\t\\f]|^{_EDGE}|{_EDGE}$"
_INT = r"^[+-]?[0-9]{1,18}$"
_FLOAT = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DATETIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}$"
_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
    "date": pa.date32(), "datetime": pa.timestamp("us", tz="UTC")}
_PY_TYPES: dict[str, type] = {"string": str, "int": int, "float": float}


def string_array(values: Sequence[Any]) -> pa.Array | None:
    """`values` as an Arrow string array, or None when any is neither a str nor None."""
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def clean_column(values: list[Any], array: pa.Array | None,
                 clean: Callable[[str], str], *, html: bool) -> tuple[list[Any], pa.Array | None]:
    """`values` cleaned by `clean`, which sees only the values Arrow cannot vouch for.

    Returns the new values and their Arrow array (None when the column is not all strings).
    """
    if array is None:
        return [clean(v) if isinstance(v, str) else v for v in values], None
    pattern = _NEEDS_CLEAN + ("|[<&]" if html else "")
    dirty = pc.or_(pc.invert(pc.string_is_ascii(array)),
                   pc.match_substring_regex(array, pattern))
    where = pc.indices_nonzero(pc.fill_null(dirty, False)).to_pylist()
    if not where:
        return values, array
    values = list(values)
    for i in where:
        values[i] = clean(values[i])
    return values, pa.array(values, type=pa.string())


@dataclass(slots=True)
class ColumnResult:
    """One declared column of a batch: typed values (Arrow) and which rows it rejects."""

    typed: pa.Array
    bad: pa.Array  # boolean, True where this column's value breaks a rule


def _python_coerce(values: list[Any], rows: list[int], kind: str,
                   out: list[Any], bad: list[bool]) -> None:
    for i in rows:
        try:
            out[i] = coerce(values[i], kind)
        except ValueError:
            bad[i] = True


def _typed(spec: ColumnSpec, values: list[Any], array: pa.Array | None,
           null: pa.Array) -> tuple[pa.Array, list[bool] | None]:
    """The column coerced to its type; the per-row coercion failures (None: none failed)."""
    kind, target = spec.type, _ARROW_TYPES[spec.type]
    n = len(values)
    if array is None:  # not all strings (JSONL, Parquet, SQL): the row-at-a-time rules
        out: list[Any] = [None] * n
        bad = [False] * n
        nulls = null.to_pylist()
        _python_coerce(values, [i for i in range(n) if not nulls[i]], kind, out, bad)
        return pa.array(out, type=target), bad if any(bad) else None
    if kind == "string":
        return pc.if_else(null, pa.scalar(None, pa.string()), array), None
    fast = None
    cast: pa.Array | None = None
    if kind == "int":
        fast = pc.match_substring_regex(array, _INT)
        cast = pc.cast(pc.if_else(fast, array, pa.scalar(None, pa.string())), pa.int64())
    elif kind == "float":
        fast = pc.match_substring_regex(array, _FLOAT)
        cast = pc.cast(pc.if_else(fast, array, pa.scalar(None, pa.string())), pa.float64())
    elif kind == "date":
        fast = pc.match_substring_regex(array, _DATE)
        parsed = pc.strptime(pc.if_else(fast, array, pa.scalar(None, pa.string())),
                             format="%Y-%m-%d", unit="s", error_is_null=True)
        back = pc.strftime(parsed, format="%Y-%m-%d")
        fast = pc.fill_null(pc.equal(back, array), False)
        cast = pc.cast(parsed, pa.date32())
    elif kind == "datetime":
        fast = pc.match_substring_regex(array, _DATETIME)
        text = pc.replace_substring(pc.if_else(fast, array, pa.scalar(None, pa.string())),
                                    " ", "T")
        parsed = pc.strptime(text, format="%Y-%m-%dT%H:%M:%S", unit="us", error_is_null=True)
        back = pc.utf8_slice_codeunits(pc.strftime(parsed, format="%Y-%m-%dT%H:%M:%S"), 0, 19)
        fast = pc.fill_null(pc.equal(back, text), False)
        cast = pc.cast(parsed, target)
    if fast is None or cast is None:  # bool: few and varied, the row-at-a-time rules
        return _typed(spec, values, None, null)
    fast = pc.fill_null(fast, False)
    slow = pc.indices_nonzero(pc.and_not(pc.invert(null), fast)).to_pylist()
    typed = pc.if_else(fast, cast, pa.scalar(None, target))
    if not slow:
        return typed, None
    out = typed.to_pylist()
    bad = [False] * n
    _python_coerce(values, slow, kind, out, bad)
    return pa.array(out, type=target), bad


def _checks(validator: RowValidator, name: str, spec: ColumnSpec,
            typed: pa.Array) -> pa.Array | None:
    """True where a typed, non-null value breaks min/max/length/enum/regex (None: no check)."""
    broken: list[pa.Array] = []
    if spec.min is not None and spec.type in ("int", "float"):
        broken.append(pc.less(typed, spec.min))
    if spec.max is not None and spec.type in ("int", "float"):
        broken.append(pc.greater(typed, spec.max))
    if spec.type == "string" and (spec.min_length is not None or spec.max_length is not None):
        length = pc.utf8_length(typed)
        if spec.min_length is not None:
            broken.append(pc.less(length, spec.min_length))
        if spec.max_length is not None:
            broken.append(pc.greater(length, spec.max_length))
    if spec.enum is not None:
        py = _PY_TYPES.get(spec.type)
        if py is not None and all(type(v) is py for v in spec.enum):
            members = pa.array(spec.enum, type=_ARROW_TYPES[spec.type])
            broken.append(pc.invert(pc.is_in(typed, value_set=members)))
        else:  # mixed-type members (1 == 1.0 == True): Python's own `in`
            allowed = validator.enums[name]
            broken.append(pa.array([v is not None and v not in allowed
                                    for v in typed.to_pylist()]))
    regex = validator.regexes.get(name)
    if regex is not None:  # Python's regex syntax, not RE2's: Python matches
        broken.append(pa.array([v is not None and regex.fullmatch(str(v)) is None
                                for v in typed.to_pylist()]))
    return _any(broken) if broken else None


def _rules(validator: RowValidator, typed: dict[str, pa.Array], n: int) -> pa.Array:
    """True where a cross-field rule fails (Python, on the columns the rules name)."""
    names = {r.left for r in validator.rules} | {r.right_column for r in validator.rules
                                                 if r.right_column}
    for r in validator.rules:
        if r.when is not None:
            names |= {r.when.left} | ({r.when.right_column} if r.when.right_column else set())
    lists = {c: typed[c].to_pylist() for c in names if c in typed}
    failed = [False] * n
    for i in range(n):
        row = {c: v[i] for c, v in lists.items()}
        for rule in validator.rules:
            if rule.when is not None and not rule.when.holds(row):
                continue
            if rule.holds(row) is False:
                failed[i] = True
                break
    return pa.array(failed)


def _any(parts: list[pa.Array]) -> pa.Array:
    out = parts[0]
    for part in parts[1:]:
        out = pc.or_(out, part)
    return pc.fill_null(out, False)


def validate_columns(validator: RowValidator, columns: dict[str, list[Any]],
                     arrays: dict[str, pa.Array | None], n: int,
                     ) -> tuple[dict[str, pa.Array], list[int]]:
    """Typed arrays of the declared columns and the rows (indices) that need the row-at-a-time
    validator: every row it may reject, and only those.

    `columns` are the cleaned input values by source column name (missing columns are all
    None); `arrays` their string arrays where they are all strings.
    """
    typed: dict[str, pa.Array] = {}
    suspect: list[pa.Array] = []
    nulls = pa.array(sorted(validator.nulls), type=pa.string())
    for name, spec in validator.columns.items():
        source = spec.source or name
        values = columns.get(source)
        if values is None:
            values = [None] * n
        array = arrays.get(source)
        if array is None and all(v is None for v in values):
            array = pa.nulls(n, pa.string())
        if array is not None:
            null = pc.fill_null(pc.or_(pc.is_null(array), pc.is_in(array, value_set=nulls)),
                                True)
        else:
            null = pa.array([v is None or (isinstance(v, str) and v in validator.nulls)
                             for v in values], type=pa.bool_())
        column, coerce_bad = _typed(spec, values, array, null)
        typed[name] = column
        if spec.required:
            suspect.append(null)
        if coerce_bad is not None:
            suspect.append(pa.array(coerce_bad))
        check = _checks(validator, name, spec, column)
        if check is not None:
            suspect.append(check)
    if validator.rules and n:
        suspect.append(_rules(validator, typed, n))
    if not suspect:
        return typed, []
    return typed, pc.indices_nonzero(_any(suspect)).to_pylist()
