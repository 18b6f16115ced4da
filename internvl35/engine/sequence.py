"""One request's life in the engine: prompt, images, generated ids, slot and status."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

import torch
from torch import Tensor

from internvl35.engine.sampling import SamplingParams
from internvl35.model.internvl import ImageFeatures


class Status(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(eq=False)
class Sequence:
    """Mutable per-request state shared by the scheduler (status, slot, finishing) and the runner (ids, images).

    The KV cache of a running sequence holds positions 0 .. num_tokens - 2: the newest token is the
    input of the next decode step.
    """

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    image_features: ImageFeatures | None = None
    pixel_values: Tensor | None = None
    generator: torch.Generator | None = None
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    slot: int | None = None
    finish_reason: str | None = None
    text: str | None = None  # the output cut before a stop string, when one matched
    safe: int = 0  # output tokens that can no longer be retracted by a stop string
    emitted: int = 0  # output tokens already reported to the caller
    image_digest: bytes | None = None  # SHA-256 of the pixel tiles, when a cache needs it (kept past release_images)
    # Says everything the prompt's keys/values depend on (token ids, image digest), or None where it cannot (ready-made
    # image features) or must not (the prefix cache off): requests admitted together with the same key share one
    # prefill (`ModelRunner.share_key`).
    share_key: tuple | None = None
    # The weights' version (`linear.weights_version`) its slot's keys/values were computed with, set at prefill when
    # the prefix cache is on: a later request may copy them while this one runs only if the weights are still those.
    kv_version: tuple | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def release_images(self) -> None:
        """Images are needed only by the prefill; drop them so a long generation does not hold them."""
        self.image_features = None
        self.pixel_values = None
