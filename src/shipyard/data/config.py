"""Pipeline YAML: what to read, how to validate, clean, de-duplicate, protect and report.

A pipeline file declares one dataset. Every section but `source` is optional.

    name: customers
    source: {path: raw/customers.csv}
    schema:
      columns:
        id: {type: int, required: true, unique: true}
        age: {type: int, min: 0, max: 130}
    pii: {columns: [notes], mode: redact}

>>> cfg = parse_pipeline("name: x\\nsource: {path: a.csv}\\n")
>>> cfg.source.format
'csv'
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shipyard.config import env
from shipyard.errors import ConfigError

__all__ = [
    "BiasSpec",
    "CleanSpec",
    "ColumnSpec",
    "DedupSpec",
    "NearDedupSpec",
    "OutputSpec",
    "PiiSpec",
    "PipelineConfig",
    "RuleSpec",
    "SchemaSpec",
    "SourceSpec",
    "config_hash",
    "load_pipeline",
    "parse_pipeline",
]

ColumnType = Literal["string", "int", "float", "bool", "date", "datetime"]
DEFAULT_NULLS = ("", "NULL", "null", "Null", "NA", "N/A", "n/a", "NaN", "nan", "None", "\\N")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENTITY = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """Where rows come from: a file, a glob of files, or a SQL query."""

    path: str | None = Field(None, description="File or glob (data/*.csv); relative to the YAML.")
    format: Literal["csv", "tsv", "jsonl", "parquet", "sql"] | None = Field(
        None, description="Inferred from the path suffix (or 'sql' when url is set).")
    encoding: str = Field("auto", description="'auto' detects it (reported), else a codec name.")
    fallback_encoding: str | None = Field(
        None, description="Re-decode rows that are not valid in the detected encoding (mixed "
                          "files) with this codec, e.g. cp1252; default: quarantine them.")
    delimiter: str | None = Field(None, description="Default ',' (csv) or tab (tsv).")
    header: bool = True
    null_values: list[str] = Field(default_factory=lambda: list(DEFAULT_NULLS))
    url: str | None = Field(None, description="SQLAlchemy URL for format sql.")
    query: str | None = Field(None, description="SQL query for format sql.")
    batch_size: int = Field(10_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _infer(self) -> SourceSpec:
        fmt: str | None = self.format
        if fmt is None:
            if self.url is not None:
                fmt = "sql"
            elif self.path is not None:
                suffix = self.path.lower().rsplit(".", 1)[-1] if "." in self.path else ""
                fmt = {"csv": "csv", "tsv": "tsv", "tab": "tsv", "jsonl": "jsonl",
                       "ndjson": "jsonl", "parquet": "parquet", "pq": "parquet",
                       "txt": "csv"}.get(suffix)
                if fmt is None:
                    raise ValueError(f"cannot tell the format of '{self.path}' from its suffix; "
                                     "set source.format to csv, tsv, jsonl or parquet")
            else:
                raise ValueError("set source.path (a file or glob) or source.url and "
                                 "source.query (SQL)")
        if fmt == "sql" and (not self.url or not self.query):
            raise ValueError("a sql source needs both source.url and source.query")
        if fmt != "sql" and not self.path:
            raise ValueError(f"a {fmt} source needs source.path")
        object.__setattr__(self, "format", fmt)
        return self


class ColumnSpec(_Strict):
    """One declared column: its type and the checks each value must pass."""

    type: ColumnType = "string"
    required: bool = False
    unique: bool = False
    min: float | None = None
    max: float | None = None
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=0)
    enum: list[Any] | None = None
    regex: str | None = None
    source: str | None = Field(None, description="Read from this input column (rename).")

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from None
        return value


class RuleSpec(_Strict):
    """A cross-field rule: `check` is '<column> <op> <column or literal>' (op: < <= > >= == !=).

    With `when`, the rule applies only to rows where that condition (same syntax) holds.
    """

    name: str
    check: str
    when: str | None = None


class SchemaSpec(_Strict):
    columns: dict[str, ColumnSpec] = Field(default_factory=dict)
    rules: list[RuleSpec] = Field(default_factory=list)
    extra_columns: Literal["keep", "drop"] = Field(
        "drop", description="What to do with input columns the schema does not declare.")


class CleanSpec(_Strict):
    unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    whitespace: bool = Field(True, description="Trim, and collapse runs of spaces and tabs.")
    fix_mojibake: bool = Field(True, description="Repair mis-decoded text with ftfy.")
    strip_html: list[str] = Field(default_factory=list, description="Columns to strip tags from.")
    columns: list[str] | None = Field(None, description="Text columns to clean (default: all).")


class NearDedupSpec(_Strict):
    column: str
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    num_perm: int = Field(64, ge=16, le=512)
    shingle: int = Field(5, ge=1, le=20, description="Characters per shingle.")
    action: Literal["report", "drop"] = "report"


class DedupSpec(_Strict):
    exact: bool = True
    columns: list[str] | None = Field(None, description="Columns that define equality "
                                                        "(default: all output columns).")
    near: NearDedupSpec | None = None


class PiiSpec(_Strict):
    """Which columns hold personal data, and what replaces it.

    `columns` are free text: PII the engine finds in a value is replaced (and a value that is
    only a number, such as an unvalidated phone number, is replaced whole). `value_columns`
    map a column whose every value *is* personal data to its type (`{phone: PHONE}`): each
    non-empty value is replaced whole, whatever it looks like.
    """

    columns: list[str] = Field(default_factory=list,
                               description="Free-text columns: PII found in them is replaced.")
    value_columns: dict[str, str] = Field(
        default_factory=dict,
        description="Columns whose every non-empty value is personal data of the given type, "
                    "e.g. {phone: PHONE, email: EMAIL}: replaced whole, valid or not.")
    mode: Literal["redact", "hash", "pseudonymize", "mask"] = "redact"
    key: str | None = Field(None, description="Key for mode hash: {$env: NAME} or {$file: path}.")
    entities: list[str] | None = None
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    prefilter: bool = Field(True, description="Skip texts that cannot hold a built-in entity.")

    @model_validator(mode="after")
    def _key_for_hash(self) -> PiiSpec:
        if self.mode == "hash" and not self.key:
            raise ValueError("pii.mode hash needs pii.key, e.g. key: {$env: DATA_PII_KEY}")
        if not self.columns and not self.value_columns:
            raise ValueError("pii needs columns (free text) or value_columns (e.g. {phone: "
                             "PHONE}); list the columns that hold personal data")
        both = sorted(set(self.columns) & set(self.value_columns))
        if both:
            raise ValueError(f"pii lists {', '.join(both)} in both columns and value_columns; "
                             "keep each column in one of them")
        for column, entity in self.value_columns.items():
            if not _ENTITY.match(entity):
                raise ValueError(f"pii.value_columns.{column} is {entity!r}; name its type in "
                                 "capitals, e.g. PHONE, EMAIL, PERSON")
        return self


class BiasSpec(_Strict):
    attributes: list[str]
    label: str | None = Field(None, description="Label or prediction column.")
    min_share: float = Field(0.05, ge=0.0, le=1.0,
                             description="Warn when a group holds less than this share of rows.")
    max_ratio: float = Field(10.0, ge=1.0,
                             description="Warn when the largest group is this many times the "
                                         "smallest.")
    max_groups: int = Field(50, ge=1)


class OutputSpec(_Strict):
    dir: str = Field("datasets", description="Root folder for versions (relative to the YAML).")
    quarantine: Literal["parquet", "jsonl"] = "parquet"


class PipelineConfig(_Strict):
    name: str
    source: SourceSpec
    schema_: SchemaSpec = Field(default_factory=SchemaSpec, alias="schema")
    clean: CleanSpec = Field(default_factory=CleanSpec)
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    pii: PiiSpec | None = None
    bias: BiasSpec | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)
    workers: int = Field(1, ge=1, le=64, description="Processes for validate/clean/PII.")
    base_dir: str = Field(".", description="Set by the loader: the YAML's folder.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"name {value!r} must be letters, digits, '_', '.' or '-' "
                             "(up to 128), starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _pii_columns_are_text(self) -> PipelineConfig:
        if self.pii is None:
            return self
        for name in (*self.pii.columns, *self.pii.value_columns):
            column = self.schema_.columns.get(name)
            if column is not None and column.type != "string":
                raise ValueError(f"pii lists column '{name}', declared as {column.type}; PII "
                                 "is replaced by text, so declare it as string (the default)")
        return self

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path


def config_hash(config: PipelineConfig) -> str:
    """SHA-256 of the pipeline config (secrets excluded), recorded in each version's manifest."""
    data = config.model_dump(mode="json", by_alias=True, exclude={"base_dir"})
    if data.get("pii") and data["pii"].get("key"):
        data["pii"]["key"] = "<secret>"
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _resolve_secrets(node: Any, path: str, base: Path, problems: list[str]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$env"}:
            value = env.get(str(node["$env"]))
            if value is None:
                problems.append(f"key '{path}' references environment variable "
                                f"{node['$env']}, which is not set; export it first.")
            return value
        if set(node) == {"$file"}:
            file = Path(str(node["$file"]))
            file = file if file.is_absolute() else base / file
            try:
                return file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(f"key '{path}' references file '{file}', which cannot be read "
                                f"({exc.strerror or exc}).")
                return None
        return {k: _resolve_secrets(v, f"{path}.{k}" if path else str(k), base, problems)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_secrets(v, f"{path}[{i}]", base, problems) for i, v in enumerate(node)]
    return node


def parse_pipeline(text: str, *, source: str = "<string>",
                   base_dir: Path | None = None) -> PipelineConfig:
    """Validate pipeline YAML text; every problem names its key, value and fix."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: is not valid YAML: {exc}. Fix the syntax.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with at least name and "
                          "source.")
    base = base_dir or Path.cwd()
    problems: list[str] = []
    resolved = _resolve_secrets(raw, "", base, problems)
    if problems:
        raise ConfigError(f"{source}: " + " ".join(problems))
    resolved["base_dir"] = str(base)
    try:
        return PipelineConfig.model_validate(resolved)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" is {value!r};"
            lines.append(f"key '{key}'{shown} {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"{source}: " + "; ".join(lines) + ".") from None


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read a pipeline YAML file; relative paths in it are relative to its folder."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Pipeline file '{file}' cannot be read ({exc.strerror or exc}); "
                          "check the path.") from None
    return parse_pipeline(text, source=str(file), base_dir=file.resolve().parent)
