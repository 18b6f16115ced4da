"""What the CLI checks before it loads a model, so that a long run is not lost to a late error: the output
path, the rows of `generate`'s input, and the values of flags (argparse types, whose errors argparse prints as
one line naming the flag)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from internvl35.data.tokenizer import check_utf8
from internvl35.engine.sampling import SEED_LIMIT

QUESTION_KEYS = ("question", "images", "thinking")  # a generate row's keys, unless it is {"input_ids"} alone


def check_destination(path: str, kind: str) -> None:
    """Fail if `path` cannot be written as a 'file' or a 'directory'. Missing parent directories are fine: the
    atomic writes create them."""
    target = Path(path)
    if kind == "file" and target.is_dir():
        raise ValueError(f"output {path} is a directory; give a file path")
    if kind == "directory" and target.exists() and not target.is_dir():
        raise ValueError(f"destination {path} exists and is not a directory")
    ancestor = next(a for a in target.absolute().parents if a.exists())
    if not ancestor.is_dir():
        raise ValueError(f"cannot write {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: no write permission in {ancestor}")


def check_generate_row(row: object) -> dict:
    """A `generate` row's keys and value types; what the model decides (image files, prompt length) is checked
    when it is queued."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "input_ids" in row:
        if len(row) > 1:
            other = next(k for k in row if k != "input_ids")
            raise ValueError(f"a row with 'input_ids' takes no other key, got {other!r}")
        if not isinstance(row["input_ids"], list) or not all(type(t) is int for t in row["input_ids"]):
            raise ValueError("'input_ids' must be a list of integers")
        return row
    unknown = [k for k in row if k not in QUESTION_KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; allowed: {', '.join(QUESTION_KEYS)} (or input_ids alone)")
    if "question" not in row:
        raise ValueError("the row has neither 'question' nor 'input_ids'")
    if not isinstance(row["question"], str):
        raise ValueError(f"'question' must be a string, got {type(row['question']).__name__}")
    check_utf8(row["question"], "'question'")
    images = row.get("images", [])
    if not isinstance(images, list) or not all(isinstance(im, str) for im in images):
        raise ValueError("'images' must be a list of image paths (strings)")
    if not isinstance(row.get("thinking", False), bool):
        raise ValueError(f"'thinking' must be true or false, got {row['thinking']!r}")
    return row


# ---- argparse types ----------------------------------------------------------------------------------------


def at_least_one(text: str) -> int:
    """Counts such as `--num-frames`."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"the seed must be in [0, 2**63-1], got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_size(text: str) -> float:
    """`--max-shard-gb`: a finite number > 0 (float() also accepts nan and inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def device(text: str) -> str:
    """`--device`: `api.resolve_device`'s check, before the model loads."""
    from internvl35.api import resolve_device

    try:
        resolve_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
