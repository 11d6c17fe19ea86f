"""Sources: stream rows in batches from CSV/TSV, JSONL, Parquet, a SQL query, or a glob of files.

Each source yields `RawBatch`es of at most `batch_size` rows. Rows that cannot be read (a wrong
field count, undecodable bytes, invalid JSON, a file that ends mid-row) come back in
`RawBatch.bad` with the reason, never dropped, so the run can account for every input row.

>>> from shipyard.data.config import SourceSpec
>>> spec = SourceSpec(path="people.csv")
>>> batches = iter_source(spec, base_dir=Path("."))  # doctest: +SKIP
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from shipyard.data.config import SourceSpec
from shipyard.errors import ConfigError

__all__ = ["BadRow", "FileInfo", "RawBatch", "SourceInfo", "detect_encoding", "iter_source"]

_SAMPLE_BYTES = 1 << 20
_FIELD_LIMIT = 256 * 1024 * 1024  # csv's own limit (128 KiB) would reject a 10 MB field
_UNDECODED = re.compile("[\udc80-\udcff]")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"),
         (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


@dataclass(slots=True)
class BadRow:
    """An input row that could not be read as a row: where it was, why, and its raw text."""

    line: int
    reason: str
    raw: str


@dataclass(slots=True)
class RawBatch:
    """Rows as read, with each row's line (or row) number.

    Rows are dicts (JSONL, Parquet, SQL), or, when `header` is set (CSV and TSV), lists of
    field strings in the header's order: cheaper to build and to send to a worker process.
    """

    file: str
    rows: list[Any]
    lines: list[int]
    bad: list[BadRow] = field(default_factory=list)
    header: list[str] | None = None

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.bad)

    def column_names(self) -> list[str]:
        """The column names the rows have, in first-seen order."""
        if self.header is not None:
            return list(self.header)
        seen: dict[str, None] = {}
        for row in self.rows:
            for key in row:
                seen.setdefault(key, None)
        return list(seen)

    def column(self, name: str) -> list[Any]:
        """Every row's value of `name` (None where a row lacks it)."""
        if self.header is not None:
            if name not in self.header:
                return [None] * len(self.rows)
            i = self.header.index(name)
            return [fields[i] for fields in self.rows]
        return [row.get(name) for row in self.rows]

    def row(self, i: int) -> dict[str, Any]:
        """Row `i` as a dict (a copy for CSV rows, the row itself otherwise)."""
        row = self.rows[i]
        return dict(zip(self.header, row, strict=True)) if self.header is not None else row


@dataclass(slots=True)
class FileInfo:
    path: str
    encoding: str | None = None
    encoding_confidence: float | None = None
    bom: bool = False
    columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SourceInfo:
    """What the run learned about its input: files, encodings, headers and warnings."""

    format: str
    files: list[FileInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "files": [
            {"path": f.path, "encoding": f.encoding, "encoding_confidence": f.encoding_confidence,
             "bom": f.bom, "columns": f.columns, "warnings": f.warnings} for f in self.files]}


def detect_encoding(sample: bytes) -> tuple[str, float, bool]:
    """(codec, confidence, has_bom) for a file's first bytes; UTF-8 is tried first (cheap).

    >>> detect_encoding("naïve".encode("utf-8"))
    ('utf-8', 1.0, False)
    """
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name, 1.0, True
    try:
        sample.decode("utf-8")
        return "utf-8", 1.0, False
    except UnicodeDecodeError as exc:
        # A sample cut inside a multi-byte character is still UTF-8.
        if exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data":
            return "utf-8", 1.0, False
    # Mostly valid UTF-8 with a few foreign rows (mixed encodings): read it as UTF-8 and let
    # the rows that do not decode be quarantined (or re-decoded with source.fallback_encoding).
    decoded = sample.decode("utf-8", errors="replace")
    errors = decoded.count("\ufffd")
    multibyte = sum(1 for ch in decoded if ord(ch) > 127) - errors
    if multibyte > errors:
        return "utf-8", round(multibyte / (multibyte + errors), 3), False
    from charset_normalizer import from_bytes  # the `data` extra; only needed for non-UTF-8

    matches = list(from_bytes(sample[:65536]))
    if not matches:
        return "utf-8", 0.0, False
    # On a tie (short samples often tie cp1250 with cp1252), prefer the most common codec.
    best = min(matches, key=lambda m: (round(m.chaos, 3), -round(m.coherence, 3),
                                       m.encoding != "cp1252", m.encoding != "latin_1"))
    return best.encoding, round(1.0 - float(best.chaos), 3), False


def _files(spec: SourceSpec, base_dir: Path) -> list[Path]:
    if spec.path is None:
        raise ConfigError("Key 'source.path' is missing; set it to a file or a glob.")
    pattern = spec.path if Path(spec.path).is_absolute() else str(base_dir / spec.path)
    if glob.has_magic(pattern):
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        if not found:
            raise ConfigError(f"Key 'source.path' is '{spec.path}', which matches no file; "
                              "check the pattern.")
        return found
    file = Path(pattern)
    if not file.is_file():
        raise ConfigError(f"Key 'source.path' is '{spec.path}', which is not a file; check the "
                          "path (relative paths start at the pipeline file's folder).")
    return [file]


def iter_source(spec: SourceSpec, *, base_dir: Path,
                info: SourceInfo | None = None) -> Iterator[RawBatch]:
    """Yield batches from the source described by `spec`; `info` collects what was learned."""
    info = info if info is not None else SourceInfo(format=str(spec.format))
    if spec.format == "sql":
        yield from _iter_sql(spec, info)
        return
    for file in _files(spec, base_dir):
        file_info = FileInfo(path=str(file))
        info.files.append(file_info)
        if spec.format in ("csv", "tsv"):
            yield from _iter_csv(file, spec, file_info)
        elif spec.format == "jsonl":
            yield from _iter_jsonl(file, spec, file_info)
        else:
            yield from _iter_parquet(file, spec, file_info)


def _header(names: list[str], info: FileInfo) -> list[str]:
    seen: dict[str, int] = {}
    out: list[str] = []
    for i, raw in enumerate(names):
        name = raw.strip() or f"column_{i + 1}"
        if name in seen:
            seen[name] += 1
            renamed = f"{name}__{seen[name]}"
            info.warnings.append(f"duplicate header '{name}' (column {i + 1}) renamed to "
                                 f"'{renamed}'")
            name = renamed
        else:
            seen[name] = 1
        out.append(name)
    return out


def _iter_csv(file: Path, spec: SourceSpec, info: FileInfo) -> Iterator[RawBatch]:
    csv.field_size_limit(_FIELD_LIMIT)
    with file.open("rb") as raw:
        sample = raw.read(_SAMPLE_BYTES)
        if not sample.strip():
            info.warnings.append("empty file: no header and no rows")
            return
        if spec.encoding == "auto":
            encoding, confidence, bom = detect_encoding(sample)
        else:
            encoding, confidence, bom = spec.encoding, 1.0, False
            if encoding.replace("_", "-").lower() in ("utf-8", "utf8") and sample.startswith(
                    codecs.BOM_UTF8):
                encoding, bom = "utf-8-sig", True
        info.encoding, info.encoding_confidence, info.bom = encoding, confidence, bom
        raw.seek(0)
        try:
            stream = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape",
                                      newline="")
        except LookupError:
            raise ConfigError(f"Key 'source.encoding' is '{encoding}', which Python does not "
                              "know; use auto or a codec such as utf-8, cp1252, latin-1.") from None
        delimiter = spec.delimiter or ("\t" if spec.format == "tsv" else ",")
        reader = csv.reader(stream, delimiter=delimiter, strict=True)
        yield from _csv_batches(reader, spec, info, encoding)


def _csv_batches(reader: Any, spec: SourceSpec, info: FileInfo,
                 encoding: str) -> Iterator[RawBatch]:
    columns: list[str] | None = None
    width = 0
    fallback = spec.fallback_encoding
    redecoded = 0
    batch = RawBatch(info.path, [], [])
    size = spec.batch_size
    header: list[str] | None = None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line = reader.line_num
            reason = str(exc)
            if reason == "unexpected end of data":
                reason = "truncated: the file ends inside a quoted field"
            batch.bad.append(BadRow(line, f"malformed CSV: {reason}", ""))
            if batch.size >= size:
                yield batch
                batch = RawBatch(info.path, [], [], header=header)
            continue
        line = reader.line_num
        if columns is None:
            if spec.header:
                columns = _header(fields, info)
                width = len(columns)
                info.columns = columns
                header = columns
                batch.header = header
                continue
            width = len(fields)
            columns = [f"column_{i + 1}" for i in range(width)]
            info.columns = columns
            header = columns
            batch.header = header
        if not fields:
            continue  # a blank line is not a row
        undecoded = _UNDECODED.search("".join(fields)) is not None
        if undecoded and fallback:
            try:
                fields = [v.encode(encoding, "surrogateescape").decode(fallback)
                          if _UNDECODED.search(v) else v for v in fields]
                undecoded = False
                redecoded += 1
            except (UnicodeError, LookupError):
                pass
        if undecoded:
            raw = spec.delimiter or ","
            shown = raw.join(v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                             for v in fields)
            batch.bad.append(BadRow(line, f"undecodable bytes for encoding {encoding}", shown))
        elif len(fields) != width:
            joined = (spec.delimiter or ",").join(fields)
            batch.bad.append(BadRow(line, f"malformed CSV: {len(fields)} fields, the header has "
                                          f"{width}", joined))
        else:
            batch.rows.append(fields)
            batch.lines.append(line)
        if batch.size >= size:
            yield batch
            batch = RawBatch(info.path, [], [], header=header)
    if columns is None:
        info.warnings.append("empty file: no header and no rows")
    if redecoded:
        info.warnings.append(f"{redecoded} rows did not decode as {encoding} and were read as "
                             f"{fallback} (source.fallback_encoding)")
    if batch.size:
        yield batch


def _iter_jsonl(file: Path, spec: SourceSpec, info: FileInfo) -> Iterator[RawBatch]:
    info.encoding, info.encoding_confidence = "utf-8", 1.0
    batch = RawBatch(str(file), [], [])
    seen: dict[str, None] = {}
    with file.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                shown = line.decode("utf-8", "replace").rstrip("\r\n")
                reason = ("truncated: the last line is not complete JSON"
                          if not line.endswith(b"\n") else f"invalid JSON: {exc}")
                batch.bad.append(BadRow(number, reason, shown))
            else:
                if isinstance(value, dict):
                    batch.rows.append(value)
                    batch.lines.append(number)
                    for key in value:
                        if key not in seen:
                            seen[key] = None
                else:
                    batch.bad.append(BadRow(number, f"a JSON {type(value).__name__}, not an "
                                                    "object", line.decode("utf-8", "replace")))
            if batch.size >= spec.batch_size:
                yield batch
                batch = RawBatch(str(file), [], [])
    info.columns = list(seen)
    if not seen and not batch.size:
        info.warnings.append("empty file: no rows")
    if batch.size:
        yield batch


def _iter_parquet(file: Path, spec: SourceSpec, info: FileInfo) -> Iterator[RawBatch]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    info.columns = list(parquet.schema_arrow.names)
    row = 0
    for record_batch in parquet.iter_batches(batch_size=spec.batch_size):
        rows = record_batch.to_pylist()
        yield RawBatch(str(file), rows, list(range(row + 1, row + 1 + len(rows))))
        row += len(rows)
    if row == 0:
        info.warnings.append("empty file: no rows")


def _iter_sql(spec: SourceSpec, info: SourceInfo) -> Iterator[RawBatch]:
    if spec.url is None or spec.query is None:
        raise ConfigError("A sql source needs both 'source.url' and 'source.query'.")
    try:
        url = make_url(spec.url)
    except ArgumentError:
        raise ConfigError(f"Key 'source.url' is '{spec.url}', which is not a SQLAlchemy URL; use "
                          "e.g. postgresql+psycopg://user@host/db or sqlite:///file.db.") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    shown = url.render_as_string(hide_password=True)
    file_info = FileInfo(path=shown)
    info.files.append(file_info)
    try:
        engine = create_engine(url)
    except (ModuleNotFoundError, NoSuchModuleError):
        raise ConfigError(f"Key 'source.url' uses the '{url.drivername}' driver, which is not "
                          "installed; install it (e.g. pip install 'shipyard[postgres]')."
                          ) from None
    try:
        with engine.connect() as conn:
            # stream_results: a server-side cursor, so the result never sits in memory whole.
            result = conn.execution_options(stream_results=True,
                                            yield_per=spec.batch_size).execute(text(spec.query))
            file_info.columns = list(result.keys())
            row = 0
            for part in result.partitions(spec.batch_size):
                rows = [dict(r._mapping) for r in part]
                yield RawBatch(shown, rows, list(range(row + 1, row + 1 + len(rows))))
                row += len(rows)
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0][:300]
        raise ConfigError(f"The SQL source {shown} failed: {first}. Check source.url and "
                          "source.query.") from None
    finally:
        engine.dispose()
