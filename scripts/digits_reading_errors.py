"""Sort a model's wrong reading lines into misperceived and misread ones.

    python scripts/digits_reading_errors.py MODEL_DIR [--n 400]

Reads the first n held-out reading lines from pixels (greedy) and counts the wrong answers by kind: a wrong
length or substitutions, on lines whose every glyph the tied head perceives right ("perceived=True") or not
(`digits_pixels_vs_words.perceived`). The figures in docs/results.md (sixth session) come from --n 400.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_pixels_vs_words import InternVL, answer_from_pixels, digits, perceived, split_seeds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=400)
    a = ap.parse_args()
    vl = InternVL.from_pretrained(a.model)
    samples = [digits.generate(s, "read") for s in split_seeds("test", a.n)]
    outputs = answer_from_pixels(vl, samples)
    glyphs = iter(perceived(vl, samples, per_glyph=True))
    kinds: Counter[str] = Counter()
    for sample, out in zip(samples, outputs):
        seen = all([next(glyphs) for _ in sample.layout])
        got, truth = re.sub(r"\D", "", out), sample.answer
        if got == truth:
            kinds["right"] += 1
        elif len(got) != len(truth):
            kinds[f"length {len(truth)} -> {len(got)}, perceived={seen}"] += 1
        else:
            wrong = sum(g != t for g, t in zip(got, truth))
            kinds[f"{wrong} substituted, perceived={seen}"] += 1
    for kind, count in kinds.most_common():
        print(count, kind)


if __name__ == "__main__":
    main()
