"""The peer of `shipyard data run` in bench/data_pipeline.py: the same steps, as a naive pandas
script would do them. Runs in any Python with pandas and pyarrow (Shipyard's `.venv` after
`pip install -e '.[test]'`); prints one JSON line.

    .venv/bin/python bench/data_pandas_peer.py big.csv out.parquet

Steps, in the order the pipeline does them:

1. read the CSV (`pd.read_csv`, every column as text, the C parser, rows with too many fields
   skipped: pandas' own answer to ragged rows). A ragged *first* row (one field too many)
   makes pandas take the first column as the index and shift every other column by one,
   silently; `index_col=False` (pandas' documented fix) is passed so the peer does the same
   work as the pipeline, and the script reports whether the plain call would have shifted;
2. clean text: mojibake repair with ftfy on the values that are not ASCII, NFC, runs of spaces
   collapsed, trimmed;
3. validate: id an integer, created_at an ISO date-time, category in the list or empty,
   amount a number >= 0; failing rows are set aside (counted as quarantined);
4. exact duplicates on (created_at, name, category, amount, review, note), case- and
   space-insensitive as the pipeline's;
5. PII: e-mail, phone and name replaced whole where not empty; in review and note, e-mail
   addresses, phone numbers, card numbers, SSNs and IPv4 addresses replaced by regular
   expressions (the usual naive patterns);
6. write Parquet.

It is what a careful analyst writes in an afternoon, not a straw man: vectorised string
methods throughout, Python only for ftfy on the few non-ASCII values.
"""

from __future__ import annotations

import json
import sys
import time

import ftfy
import pandas as pd

CATEGORIES = ["books", "electronics", "garden", "toys", "grocery", "sports", "beauty", "auto"]
NULLS = ["", "NULL", "null", "Null", "NA", "N/A", "n/a", "NaN", "nan", "None", "\\N"]
TEXT = ["name", "email", "phone", "category", "review", "note"]
KEY = ["created_at", "name", "category", "amount", "review", "note"]
PATTERNS = [
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",  # e-mail
    r"\b(?:\d[ -]?){13,19}\b",  # card
    r"\b\d{3}-\d{2}-\d{4}\b",  # SSN
    r"\b(?:\d{1,3}\.){3}\d{1,3}\b",  # IPv4
    r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}[ .-]\d{2,4}[ .-]?\d{2,4}",  # phone
]


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    started = time.process_time()
    head = pd.read_csv(source, dtype=str, keep_default_na=False, nrows=100)
    shifts = list(head.columns) != list(head.reset_index(drop=True).columns) or \
        head.index.name is not None or not head.index.equals(pd.RangeIndex(len(head)))
    df = pd.read_csv(source, dtype=str, keep_default_na=False, on_bad_lines="skip",
                     index_col=False)
    rows_in = len(df)
    for column in TEXT:
        values = df[column].to_numpy(copy=True)
        foreign = ~df[column].map(str.isascii).to_numpy()
        values[foreign] = [ftfy.fix_text(v) for v in values[foreign]]
        df[column] = (pd.Series(values, index=df.index).str.normalize("NFC")
                      .str.replace(r"\s+", " ", regex=True).str.strip())
    nulls = {c: df[c].isin(NULLS) for c in df.columns}
    ids = pd.to_numeric(df["id"], errors="coerce")
    created = pd.to_datetime(df["created_at"], errors="coerce", utc=True, format="ISO8601")
    amount = pd.to_numeric(df["amount"].where(~nulls["amount"]), errors="coerce")
    bad = (ids.isna() | (ids % 1 != 0) | created.isna()
           | (~df["category"].isin(CATEGORIES) & ~nulls["category"])
           | (amount.isna() & ~nulls["amount"]) | (amount < 0))
    quarantined = int(bad.sum())
    df = df[~bad].copy()
    df["id"], df["created_at"], df["amount"] = ids[~bad].astype("int64"), created[~bad], \
        amount[~bad]
    for column in TEXT:
        df.loc[nulls[column][~bad], column] = None
    key = df[KEY].astype(str).apply(lambda c: c.str.casefold())
    duplicates = key.duplicated()
    df = df[~duplicates]
    for column in ("email", "phone", "name"):
        df[column] = df[column].where(df[column].isna(), "[REDACTED]")
    for column in ("review", "note"):
        values = df[column]
        for pattern in PATTERNS:
            values = values.str.replace(pattern, "[REDACTED]", regex=True)
        df[column] = values
    df.to_parquet(target, index=False)
    print(json.dumps({"plain_read_csv_shifts_columns": bool(shifts), "rows_in": rows_in,
                      "rows_out": len(df), "quarantined": quarantined,
                      "duplicates": int(duplicates.sum()),
                      "cpu_seconds": time.process_time() - started}))


if __name__ == "__main__":
    main()
