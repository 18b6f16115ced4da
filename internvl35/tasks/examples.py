"""Write one example image per family to internvl35/assets/examples/, plus examples.json.

    python -m internvl35.tasks.examples [--out DIR]

Seeds come from the test split (never trained on), so the README can ask a trained model
about these images honestly. Output is deterministic: rerunning rewrites identical files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from internvl35.tasks.base import FAMILIES, TEST_SEED_START

OUT = Path(__file__).resolve().parent.parent / "assets" / "examples"
# family -> (seed offset in the test split, kind): one readable, representative question each.
CHOICES = {
    "digits": (0, "sum"),
    "shapes": (0, "position"),
    "chart": (0, "compute"),
    "document": (0, "total"),
    "gui": (0, "action"),
    "embodied": (0, "move"),
}


def write_examples(out: Path = OUT) -> dict[str, dict]:
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, (offset, kind) in CHOICES.items():
        seed = TEST_SEED_START + offset
        s = FAMILIES[name].generate(seed, kind=kind)
        path = out / f"{name}.png"
        s.images[0].save(path, optimize=True)
        index[name] = {
            "image": path.name,
            "seed": seed,
            "kind": s.kind,
            "question": s.question,
            "answer": s.answer,
            "rationale": s.rationale,
            "target": s.target,
        }
    (out / "examples.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    for name, ex in write_examples(args.out).items():
        print(f"{name:9s} {ex['image']:13s} Q: {ex['question'].splitlines()[0]}  A: {ex['answer']}")


if __name__ == "__main__":
    main()
