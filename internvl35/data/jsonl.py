"""JSON Lines input (`internvl35 generate`'s rows, `train sft`'s examples): one object per line, read strictly.

An error names the file and the line: a byte order mark, bytes that are not UTF-8, a line that is not JSON,
NaN or Infinity (not JSON, though Python's parser takes them), or what the caller's `check` rejects. Lines
are split at "\n" only: str.splitlines also splits at U+2028 and \x85, which JSON strings may hold as they are.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Row = TypeVar("Row")


def read_jsonl(path: str | Path, check: Callable[[object], Row]) -> list[tuple[int, Row]]:
    """(line number, check(object)) for each non-blank line; `check` raises ValueError for a bad row."""
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        raise ValueError(f"{path}: starts with a byte order mark (BOM); save it as UTF-8 without one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from e
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip(" \t\r"):
            try:
                rows.append((n, check(_parse(line))))
            except ValueError as e:
                raise ValueError(f"{path}: line {n}: {e}") from e
    return rows


def _parse(line: str) -> object:
    try:
        return json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from e


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed (JSON numbers must be finite)")
