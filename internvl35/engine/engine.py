"""The generation engine: continuous batching over a per-slot KV cache, token ids in and out.

    engine = Engine(model, eos_token_ids=[tok.eos_id], detokenize=tok.decode)
    outs = engine.generate([Request(ids, SamplingParams(max_new_tokens=64))])

Each `step` admits waiting requests (one packed prefill, which yields their first token), then runs one
batched decode step for every running request. Requests join and leave between steps; the
`Scheduler` decides (queues, slots, finishing), the `ModelRunner` computes (inputs, model, sampling).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence as Seq
from dataclasses import dataclass

import torch
from torch import Tensor

from internvl35.engine.runner import ModelRunner
from internvl35.engine.sampling import SamplingParams, make_generator
from internvl35.engine.scheduler import Scheduler
from internvl35.engine.sequence import Sequence
from internvl35.engine.stopping import StopChecker
from internvl35.model.internvl import ImageFeatures, InternVLModel

DEFAULT_MAX_SEQ_LEN = 4096  # per-slot context when not given (capped by the model's max positions)
# Projected image features kept for reuse: ~256 tiles of a 1024-wide language model in fp32 (1 MiB a tile).
DEFAULT_IMAGE_CACHE_BYTES = 256 << 20
# Keys/values of finished requests kept for prompts that continue them (a chat's next turn).
DEFAULT_PREFIX_CACHE_BYTES = 256 << 20


class PromptTooLongError(ValueError):
    """The prompt plus max_new_tokens does not fit in the engine's context."""


@dataclass
class Request:
    input_ids: list[int]
    params: SamplingParams
    image_features: ImageFeatures | None = None
    pixel_values: Tensor | None = None  # (tiles, 3, H, W); encoded once at admission


@dataclass
class RequestOutput:
    request_id: int
    new_token_ids: list[int]
    token_ids: list[int]  # all generated so far
    finished: bool
    finish_reason: str | None  # "stop" | "length" (| "abort")
    text: str | None = None  # the output text cut exactly before a stop string, when one matched


class Engine:
    def __init__(self, model: InternVLModel, *, eos_token_ids: Seq[int], max_batch_size: int = 16,
                 max_seq_len: int | None = None, detokenize: Callable[[list[int]], str] | None = None,
                 device: torch.device | str | None = None, max_prefill_tokens: int = 4096,
                 image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES) -> None:
        """max_seq_len: per-request context (prompt + new tokens); the cache holds max_batch_size of them.
        max_prefill_tokens: prompt tokens admitted per step (a single longer prompt is still admitted).
        image_cache_bytes: projected image features kept for later requests with the same pixels (a chat's
        next turn, another question about the image), least recently used evicted first; 0 turns it off.
        prefix_cache_bytes: keys/values of finished requests kept for later prompts that start with the same
        tokens and images (a chat's next turn prefills only its new part); 0 turns it off."""
        if max_batch_size < 1 or max_prefill_tokens < 1:
            raise ValueError(f"max_batch_size and max_prefill_tokens must be >= 1, got {max_batch_size}, {max_prefill_tokens}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        limit = model.config.text.max_position_embeddings
        self.max_seq_len = max_seq_len or min(limit, DEFAULT_MAX_SEQ_LEN)
        if not 1 < self.max_seq_len <= limit:
            raise ValueError(f"max_seq_len={self.max_seq_len} must be in 2..{limit} (the model's max positions)")
        self.detokenize = detokenize
        self.scheduler = Scheduler(max_batch_size, max_prefill_tokens, StopChecker(eos_token_ids, detokenize))
        self.runner = ModelRunner(self.model, max_batch_size, self.max_seq_len, self.device, image_cache_bytes,
                                  prefix_cache_bytes)
        self._next_id = 0

    # ---- requests --------------------------------------------------------------------------------------

    def add_request(self, request: Request) -> int:
        self._validate(request)
        return self._add(request)

    def _add(self, request: Request) -> int:
        """Queue a validated request."""
        seq = Sequence(self._next_id, list(request.input_ids), request.params, request.image_features,
                       request.pixel_values, make_generator(request.params))
        seq.image_digest = self.runner.image_digest(seq.pixel_values)
        seq.share_key = self.runner.share_key(seq)
        self._next_id += 1
        self.scheduler.add(seq)
        return seq.id

    def _validate(self, request: Request) -> None:
        ids, params = request.input_ids, request.params
        if not ids:
            raise ValueError("Request.input_ids is empty")
        vocab = self.model.config.text.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise ValueError(f"Request.input_ids must be ints in [0, {vocab})")
        if len(ids) + params.max_new_tokens > self.max_seq_len:
            raise PromptTooLongError(
                f"prompt of {len(ids)} tokens + max_new_tokens={params.max_new_tokens} = "
                f"{len(ids) + params.max_new_tokens} exceeds the engine context of {self.max_seq_len} tokens")
        if params.stop and self.detokenize is None:
            raise ValueError("SamplingParams.stop needs an engine built with detokenize=...")
        self._validate_images(request)

    def _validate_images(self, request: Request) -> None:
        """The prompt's <IMG_CONTEXT> count must equal the feature rows, checked here so one bad request
        cannot fail a whole prefill batch later."""
        if request.image_features is not None and request.pixel_values is not None:
            raise ValueError("pass either pixel_values or image_features, not both")
        image_id = self.model.config.image_token_id
        slots = 0 if image_id is None else sum(t == image_id for t in request.input_ids)
        if request.pixel_values is not None:
            px = request.pixel_values
            size = self.model.config.vision.image_size
            if px.dim() != 4 or tuple(px.shape[1:]) != (3, size, size):
                raise ValueError(f"pixel_values must be (tiles, 3, {size}, {size}), got {tuple(px.shape)}")
            rows = px.shape[0] * self.model.config.tokens_per_tile
        else:
            feats = request.image_features
            rows = 0 if feats is None else feats.num_tokens
            if feats is not None and feats.embeds.shape[1] != self.model.config.text.hidden_size:
                raise ValueError(f"image_features have width {feats.embeds.shape[1]}, the language model "
                                 f"expects {self.model.config.text.hidden_size}")
        if slots != rows:
            raise ValueError(f"image features and image tokens do not match: {slots} <IMG_CONTEXT> positions "
                             f"in the prompt, {rows} feature rows")

    def abort(self, request_id: int) -> None:
        if self.scheduler.abort(request_id) is not None:
            self.runner.move(self.scheduler.compact())

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- stepping --------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Admit waiting requests (prefill: their first token), then one decode step for all running ones."""
        touched: dict[int, Sequence] = {}
        admitted = self.scheduler.admit()
        if admitted:
            self._run(admitted, self.runner.prefill(admitted, self.scheduler.running))
            for seq in admitted:
                seq.release_images()
            touched.update((s.id, s) for s in admitted)
        running = self.scheduler.running
        if running:
            self._run(running, self.runner.decode(running))
            touched.update((s.id, s) for s in running)
        return [self._output(s) for s in touched.values()]

    def _run(self, seqs: list[Sequence], logits: Tensor) -> None:
        """Sample, record, finish, then re-densify the slots so the next forward sees rows 0..n-1."""
        self.scheduler.postprocess(seqs, self.runner.sample(seqs, logits))
        self.runner.keep_prefixes([s for s in seqs if s.finished])  # while their slots still hold them
        self.runner.move(self.scheduler.compact())

    def _output(self, seq: Sequence) -> RequestOutput:
        shown = len(seq.output_ids) if seq.finished else seq.safe
        new = seq.output_ids[seq.emitted:shown]
        seq.emitted = max(seq.emitted, shown)
        return RequestOutput(seq.id, new, seq.output_ids[:shown], seq.finished, seq.finish_reason, seq.text)

    # ---- run to completion -----------------------------------------------------------------------------

    def generate(self, requests: list[Request], progress: bool = False) -> list[RequestOutput]:
        """Run the requests to completion (alongside any already in flight); outputs in input order.

        All requests are checked before any is added, and if the call ends early (an error, Ctrl-C) its unfinished
        requests are aborted: none is left to run on, unseen, inside a later call.
        """
        for request in requests:
            self._validate(request)
        ids: list[int] = []
        try:
            for request in requests:  # one by one, so that an interruption knows which were added
                ids.append(self._add(request))
        except BaseException:
            for rid in ids:
                self.abort(rid)
            raise
        done = self.wait(ids, progress)
        return [done[i] for i in ids]

    def wait(self, ids: list[int], progress: bool = False,
             done: dict[int, RequestOutput] | None = None) -> dict[int, RequestOutput]:
        """Step until the added requests `ids` finish; each final output goes into `done` (returned) as it comes,
        so a caller interrupted meanwhile keeps the finished ones. On any early exit the unfinished are aborted."""
        done = {} if done is None else done
        pending = set(ids) - set(done)
        bar = _progress(len(ids)) if progress else None
        tokens, start = 0, time.perf_counter()
        try:
            while pending:
                for out in self.step():
                    tokens += len(out.new_token_ids)
                    if out.finished and out.request_id in pending:
                        pending.discard(out.request_id)
                        done[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
                if bar is not None:
                    bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.1f}")
        finally:
            for rid in pending:
                self.abort(rid)
            if bar is not None:
                bar.close()
        return done

    def stream(self, request: Request) -> Iterator[list[int]]:
        """Yield the request's new token ids as they come; closing the iterator early aborts the request."""
        for out in self.stream_outputs(request):
            if out.new_token_ids:
                yield out.new_token_ids

    def stream_outputs(self, request: Request) -> Iterator[RequestOutput]:
        """Yield the request's outputs step by step, the last one finished (with `text` when a stop string
        cut it); closing the iterator early aborts the request."""
        rid = self.add_request(request)
        finished = False
        try:
            while not finished:
                for out in self.step():
                    if out.request_id == rid:
                        finished = out.finished
                        yield out
        finally:
            if not finished:
                self.abort(rid)


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="generate", unit="req")
