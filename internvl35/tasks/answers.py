"""Answer extraction and scoring, shared by every task family (and used as the RL reward).

`score(target, output)` maps a free-form model output to 1.0 (correct) or 0.0 (wrong). It
never raises: empty, junk, malformed or huge outputs score 0.0. `target` is the JSON-able
spec a generator stores in `Sample.target`, one of:

    {"type": "number", "value": 8}                          int/float compare
    {"type": "digits", "value": "503"}                      digit sequence; "5 0 3" is fine
    {"type": "text",   "value": "INV-4821"}                 one token, case/space-insensitive
    {"type": "choice", "answers": ["up", "right"],          any listed answer counts;
     "options": ["up", "down", "left", "right"],            options are the words to look for,
     "letters": {"A": "tea", "B": "jam"}}                   letters optional (multiple choice)
    {"type": "box",    "box": [x1, y1, x2, y2]}             ints in 0..1000, IoU >= 0.5 counts
    {"type": "click",  "box": [x1, y1, x2, y2]}             floats in [0, 1], click inside counts

Extraction (VLMEvalKit-like, see SYSTEM.md section 12):
  1. keep what follows the last `</think>` (an unclosed `<think>` means no answer);
  2. `\\boxed{...}` wins; two different boxed answers are wrong;
  3. else the last "Answer: ..." / "the answer is ..." line;
  4. else the whole remaining text; then a type-specific reading (last number, a single
     option letter, the one option word mentioned, ...).
"""

from __future__ import annotations

import math
import re

# Only the tail is read: bounds the cost of a reward call whatever the model emitted.
MAX_CHARS = 8192
IOU_THRESHOLD = 0.5

_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is\s*:?|:)\s*([^\n]*)", re.IGNORECASE
)
# A minus sign counts only when it is not a binary minus ("5-3" reads 5 and 3).
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LETTER = re.compile(r"^\W*([A-Z])\W*$", re.IGNORECASE)
_BOX = re.compile(r"\[\[([^\[\]]{0,200})\]\]|<box>\s*\[([^\[\]]{0,200})\]\s*</box>")
_CLICK = re.compile(r"click\(([^()]{0,200})\)")
_KWARG = re.compile(r"^\s*([xy])\s*=\s*(.+?)\s*$")
_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


def final_text(output: str) -> str:
    """The part of `output` after the last `</think>`, special tokens removed, tail-capped."""
    if not isinstance(output, str):
        return ""
    if "</think>" in output:
        output = output.rsplit("</think>", 1)[1]
    elif "<think>" in output:
        return ""  # still thinking: no final answer was given
    output = output[-MAX_CHARS:]
    return _SPECIAL.sub("", output).strip()


def extract(output: str) -> str | None:
    """The answer string of a free-form output, or None when it is ambiguous/absent."""
    text = final_text(output)
    boxed = [b.strip() for b in _BOXED.findall(text)]
    if boxed:
        return boxed[0] if len({_norm(b) for b in boxed}) == 1 else None
    said = [m.strip() for m in _ANSWER_IS.findall(text) if m.strip()]
    if said:
        return said[-1]
    return text or None


def _norm(s: str) -> str:
    return re.sub(r"\s+", "", s).lower()


def _to_float(s: str) -> float | None:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_number(text: str) -> float | None:
    """The last number in `text` ("5 + 3 = 8" -> 8); number words if no digits."""
    nums = _NUMBER.findall(_THOUSANDS.sub("", text))
    if nums:
        return _to_float(nums[-1])
    words = [_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _WORDS]
    return float(words[-1]) if words else None


def read_choice(text: str, options: list[str], letters: dict[str, str] | None) -> str | None:
    """A single option letter, or the one option word that `text` mentions."""
    letters = letters or {}
    m = _LETTER.match(text)
    if m and m.group(1).upper() in letters:
        return letters[m.group(1).upper()]
    found = {
        opt
        for opt in options
        if re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text, re.IGNORECASE)
    }
    return found.pop() if len(found) == 1 else None


def _parse_numbers(s: str, n: int) -> list[float] | None:
    parts = [p.strip() for p in s.split(",")]
    if len(parts) != n:
        return None
    vals = [_to_float(p) for p in parts]
    return None if any(v is None for v in vals) else vals


def read_box(text: str) -> list[float] | None:
    """The one box `[[x1, y1, x2, y2]]` (0..1000) in `text`; None if absent, bad or several."""
    boxes = []
    for a, b in _BOX.findall(text):
        vals = _parse_numbers(a or b, 4)
        if vals is None or not all(0 <= v <= 1000 for v in vals):
            return None
        if vals[0] > vals[2] or vals[1] > vals[3]:
            return None
        boxes.append(tuple(vals))
    return list(boxes[0]) if len(set(boxes)) == 1 else None


def _click_args(args: str) -> tuple[float, float] | None:
    parts = args.split(",")
    if len(parts) != 2:
        return None
    kw = [_KWARG.match(p) for p in parts]
    if all(kw):
        named = {m.group(1): _to_float(m.group(2)) for m in kw}
        x, y = named.get("x"), named.get("y")
    elif not any(kw):
        x, y = _to_float(parts[0]), _to_float(parts[1])
    else:
        return None
    if x is None or y is None or not (0 <= x <= 1 and 0 <= y <= 1):
        return None
    return x, y


def read_click(text: str) -> tuple[float, float] | None:
    """The one `click(x=.., y=..)` point in [0, 1]; None if absent, malformed or several."""
    points = set()
    for args in _CLICK.findall(text):
        p = _click_args(args)
        if p is None:
            return None
        points.add(p)
    return points.pop() if len(points) == 1 else None


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0.0 for empty unions."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _numbers_equal(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _check_text(cand: str, value: str) -> bool:
    clean = cand.strip().strip("'\"`*").rstrip(".").strip()
    if _norm(clean) == _norm(value):
        return True
    # "The total is 12.50." -> last token; values are single tokens by construction.
    last = clean.split()[-1].strip("'\"`*") if clean.split() else ""
    return last.lower() == value.lower()


def _score_value(target: dict, cand: str) -> bool:
    kind = target["type"]
    if kind == "number":
        got = read_number(cand)
        return got is not None and _numbers_equal(got, float(target["value"]))
    if kind == "digits":
        return "".join(re.findall(r"\d+", cand)) == str(target["value"])
    if kind == "text":
        return _check_text(cand, str(target["value"]))
    if kind == "choice":
        got = read_choice(cand, target["options"], target.get("letters"))
        return got is not None and got.lower() in {a.lower() for a in target["answers"]}
    raise ValueError(f"unknown target type {kind!r}")


def score(target: dict, output: str) -> float:
    """1.0 if `output` answers `target` correctly, else 0.0; never raises on bad output."""
    if target["type"] == "box":
        box = read_box(final_text(output))
        return float(box is not None and iou(box, target["box"]) >= IOU_THRESHOLD)
    if target["type"] == "click":
        p = read_click(final_text(output))
        x1, y1, x2, y2 = target["box"]
        return float(p is not None and x1 <= p[0] <= x2 and y1 <= p[1] <= y2)
    cand = extract(output)
    return float(cand is not None and _score_value(target, cand))
