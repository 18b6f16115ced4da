"""Generation engine: continuous batching over a per-slot KV cache (token ids in, token ids out), and scoring."""

from internvl35.engine.engine import Engine, PromptTooLongError, Request, RequestOutput
from internvl35.engine.sampling import SamplingParams
from internvl35.engine.scoring import score

__all__ = ["Engine", "PromptTooLongError", "Request", "RequestOutput", "SamplingParams", "score"]
