"""CSV exports that a spreadsheet opens as data: every CSV Refinery writes goes through `csv_bytes`.

A spreadsheet evaluates a cell whose text begins with `=`, `+`, `-`, `@`, a tab or a carriage return
as a formula, and labels come from the command line (`suite.name=-2+3`, `@A1+cmd`). OWASP's rule
(CSV injection) neutralises such a text by prefixing a single quote, which the spreadsheet shows as
text. Numbers stay numbers: a float column is written as it is, and a text that is a plain number
("-0.5") is left as it is, since a spreadsheet reads it as that number, never as a formula.
`read_csv_export` undoes the prefix, so that what the API returns is what the store holds.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _is_formula(text: str) -> bool:
    return text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text)


def neutralise(value: Any) -> Any:
    """`value` as a spreadsheet reads it as text: a formula-like text prefixed with a single quote
    (and a text already starting with quote-then-formula gets one more, so reading back is exact);
    anything else (numbers, None, plain texts) unchanged."""
    if not isinstance(value, str):
        return value
    if _is_formula(value) or (value.startswith(_QUOTE) and _is_formula(value.lstrip(_QUOTE))):
        return _QUOTE + value
    return value


def restore(value: Any) -> Any:
    """The inverse of `neutralise`."""
    if isinstance(value, str) and value.startswith(_QUOTE) and _is_formula(value.lstrip(_QUOTE)):
        return value[1:]
    return value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as CSV (no index, '\\n' line ends), every text cell and header neutralised."""
    safe = frame.rename(columns=neutralise)
    for column in _text_columns(safe):
        safe[column] = safe[column].map(neutralise)
    return safe.to_csv(index=False, lineterminator="\n").encode()


def read_csv_export(path: Path) -> pd.DataFrame:
    """A CSV that csv_bytes wrote, with its texts as they were before neutralising."""
    frame = pd.read_csv(path)
    frame = frame.rename(columns=restore)
    for column in _text_columns(frame):
        frame[column] = frame[column].map(restore)
    return frame


def _text_columns(frame: pd.DataFrame) -> list:
    return [c for c, kind in frame.dtypes.items() if kind == object or pd.api.types.is_string_dtype(kind)]
