"""Held-out evaluation on the synthetic task families: per-family and per-kind accuracy, with a baseline.

Samples come from each family's test split (seeds disjoint from training; digit scans disjoint too).
Generation is batched through the engine, greedy by default. Every score comes from the family's own
checker on the model's free-form output. The baseline is the best constant answer: for each kind, the
most frequent reference answer of the test set, scored by the same checker. It is at least as strong as
random guessing, so "above baseline" means "above chance".
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from internvl35.api import InternVL
from internvl35.engine.sampling import SamplingParams
from internvl35.tasks.base import FAMILIES, FAMILY_NAMES, Sample, make_split


@dataclass
class Score:
    correct: float = 0.0
    total: int = 0
    baseline: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def baseline_accuracy(self) -> float:
        return self.baseline / self.total if self.total else 0.0


@dataclass
class Report:
    model: str
    thinking: bool
    n_per_family: int
    families: dict[str, Score] = field(default_factory=dict)
    kinds: dict[str, Score] = field(default_factory=dict)  # "family/kind"
    examples: list[dict] = field(default_factory=list)  # a few outputs per family, for reading

    def to_json(self) -> str:
        def rows(scores: dict[str, Score]) -> dict:
            return {k: {**asdict(s), "accuracy": s.accuracy, "baseline_accuracy": s.baseline_accuracy}
                    for k, s in scores.items()}

        return json.dumps({"model": self.model, "thinking": self.thinking, "n_per_family": self.n_per_family,
                           "families": rows(self.families), "kinds": rows(self.kinds), "examples": self.examples},
                          indent=1)

    def to_markdown(self) -> str:
        lines = [f"Model `{self.model}`, {'thinking' if self.thinking else 'direct'} mode, "
                 f"{self.n_per_family} test samples per family, greedy.", "",
                 "| family | accuracy | constant-answer baseline | n |", "|---|---|---|---|"]
        lines += [f"| {k} | {s.accuracy:.1%} | {s.baseline_accuracy:.1%} | {s.total} |" for k, s in self.families.items()]
        lines += ["", "| family/kind | accuracy | baseline | n |", "|---|---|---|---|"]
        lines += [f"| {k} | {s.accuracy:.1%} | {s.baseline_accuracy:.1%} | {s.total} |" for k, s in sorted(self.kinds.items())]
        return "\n".join(lines) + "\n"


def baseline_scores(samples: Sequence[Sample]) -> list[float]:
    """Score of the most frequent reference answer of each sample's kind."""
    by_kind = defaultdict(list)
    for s in samples:
        by_kind[(s.family, s.kind)].append(s.answer)
    best = {k: Counter(v).most_common(1)[0][0] for k, v in by_kind.items()}
    return [FAMILIES[s.family].score(s, best[(s.family, s.kind)]) for s in samples]


def evaluate(vl: InternVL, families: Sequence[str] | None = None, n_per_family: int = 100, *, thinking: bool = False,
             params: SamplingParams | None = None, model_name: str = "", progress: bool = False,
             keep_examples: int = 3) -> Report:
    families = list(families or FAMILY_NAMES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {', '.join(FAMILY_NAMES)}")
    params = params or SamplingParams(max_new_tokens=512 if thinking else 64)
    report = Report(model_name, thinking, n_per_family)
    for family in families:
        samples = make_split(family, "test", n_per_family)
        outputs = vl.batch_chat([s.question for s in samples], [s.images for s in samples], params=params,
                                thinking=thinking, progress=progress)
        _tally(report, samples, outputs, keep_examples)
    return report


def _tally(report: Report, samples: Sequence[Sample], outputs: Sequence[str], keep: int) -> None:
    for s, out, base in zip(samples, outputs, baseline_scores(samples)):
        got = FAMILIES[s.family].score(s, out)
        for scores, key in ((report.families, s.family), (report.kinds, f"{s.family}/{s.kind}")):
            sc = scores.setdefault(key, Score())
            sc.correct += got
            sc.total += 1
            sc.baseline += base
        if sum(e["family"] == s.family for e in report.examples) < keep:
            report.examples.append({"family": s.family, "kind": s.kind, "question": s.question, "answer": s.answer,
                                    "output": out, "score": got})
