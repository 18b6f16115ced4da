"""Stop conditions on token ids: eos / stop ids, length, and stop strings cut exactly.

Stop strings are searched in the detokenised tail of the output (a window a little longer than the
longest stop string), so a step costs O(window), not O(output). While the tail ends with a prefix of a
stop string, those tokens are held back from streaming: a stop string is never half-streamed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence as Seq

from internvl35.engine.sequence import Sequence

Detokenize = Callable[[list[int]], str]
WINDOW_SLACK = 8  # extra tokens decoded around a stop string: tokens may be empty or merge on decode


class StopChecker:
    def __init__(self, eos_token_ids: Seq[int], detokenize: Detokenize | None) -> None:
        self.eos = frozenset(eos_token_ids)
        self.detokenize = detokenize

    def check(self, seq: Sequence) -> str | None:
        """After a token was appended: the finish reason ("stop" / "length") or None; updates seq.safe."""
        token = seq.output_ids[-1]
        if token in self.eos or token in seq.params.stop_token_ids:
            seq.safe = len(seq.output_ids)
            return "stop"
        if seq.params.stop:
            if self._stop_string(seq):
                return "stop"
        else:
            seq.safe = len(seq.output_ids)
        if len(seq.output_ids) >= seq.params.max_new_tokens:
            seq.safe = len(seq.output_ids)
            return "length"
        return None

    def _stop_string(self, seq: Sequence) -> bool:
        """True when a stop string completed: output_ids and text are cut before it. Else advance seq.safe."""
        out, stops = seq.output_ids, seq.params.stop
        window = out[-(max(map(len, stops)) + WINDOW_SLACK):]
        tail = self.detokenize(window)
        if any(s in tail for s in stops):
            text = self.detokenize(out)
            cut = min(i for i in (text.find(s) for s in stops) if i >= 0)
            n = _tokens_within(self.detokenize, out, cut)
            seq.output_ids, seq.text, seq.safe = out[:n], text[:cut], n
            return True
        held = max(_partial_match(tail, s) for s in stops)
        if not held:
            seq.safe = len(out)
            return False
        keep = len(tail) - held
        n = len(window)
        while n > 0 and len(self.detokenize(window[:n])) > keep:
            n -= 1
        seq.safe = max(seq.safe, len(out) - len(window) + n)
        return False


def _partial_match(text: str, stop: str) -> int:
    """Length of the longest proper prefix of `stop` that `text` ends with."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


def _tokens_within(detokenize: Detokenize, ids: list[int], chars: int) -> int:
    """The longest prefix of ids whose text fits in the first `chars` characters."""
    n = len(ids)
    while n > 0 and len(detokenize(ids[:n])) > chars:
        n -= 1
    return n
