"""Queues, slots, admission and finishing. Never touches a tensor: it decides, the runner computes.

Slots stay dense: the running sequences occupy slots 0 .. n-1 in order, so the runner decodes the
contiguous cache prefix. When sequences leave, the ones in the highest slots move into the holes
(`compact` returns the moves; the runner copies their cache rows, O(length) once per departure).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from internvl35.engine.sequence import Sequence, Status
from internvl35.engine.stopping import StopChecker


class Scheduler:
    def __init__(self, max_slots: int, max_prefill_tokens: int, stopper: StopChecker) -> None:
        self.max_slots, self.max_prefill_tokens, self.stopper = max_slots, max_prefill_tokens, stopper
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # running[i].slot == i

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def admit(self) -> list[Sequence]:
        """Move waiting sequences into free slots, first come first served, within the prefill token budget.

        The first admitted sequence ignores the budget, so a long prompt cannot starve. A prompt the same as one
        admitted in this step (`Sequence.share_key`: the samples of one RL group) costs nothing: it shares that
        one's prefill.
        """
        admitted: list[Sequence] = []
        budget = self.max_prefill_tokens
        shared: set[tuple] = set()
        while self.waiting and len(self.running) < self.max_slots:
            seq = self.waiting[0]
            cost = 0 if seq.share_key is not None and seq.share_key in shared else seq.num_prompt_tokens
            if admitted and cost > max(budget, 0):
                break
            self.waiting.popleft()
            budget -= cost
            if seq.share_key is not None:
                shared.add(seq.share_key)
            seq.status, seq.slot = Status.RUNNING, len(self.running)
            self.running.append(seq)
            admitted.append(seq)
        return admitted

    def postprocess(self, seqs: list[Sequence], tokens: list[int]) -> None:
        """Append each sequence's new token and finish those that hit a stop condition."""
        for seq, token in zip(seqs, tokens):
            seq.output_ids.append(token)
            reason = self.stopper.check(seq)
            if reason is not None:
                seq.status, seq.finish_reason = Status.FINISHED, reason

    def compact(self) -> list[tuple[int, int, int]]:
        """Drop finished sequences; the sequences in slots >= n move into the holes below n.

        Returns cache moves (src slot, dst slot, length): one per hole, never one per survivor.
        """
        alive = [s for s in self.running if not s.finished]
        for seq in self.running:
            if seq.finished:
                seq.slot = None
        n = len(alive)
        taken = {s.slot for s in alive}
        holes = [i for i in range(n) if i not in taken]
        movers = [s for s in alive if s.slot >= n]
        moves = []
        for hole, seq in zip(holes, movers):
            moves.append((seq.slot, hole, seq.num_tokens - 1))  # the cache holds all but the newest token
            seq.slot = hole
        self.running = sorted(alive, key=lambda s: s.slot)
        return moves

    def abort(self, seq_id: int) -> Sequence | None:
        """Finish a sequence now (reason "abort"); the caller then runs `compact` to free its slot."""
        for seq in self._all():
            if seq.id == seq_id and not seq.finished:
                if seq.status is Status.WAITING:
                    self.waiting.remove(seq)
                seq.status, seq.finish_reason = Status.FINISHED, "abort"
                return seq
        return None

    def _all(self) -> Iterable[Sequence]:
        yield from self.waiting
        yield from self.running
