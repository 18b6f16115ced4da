"""The Python API: load a model, chat about images, generate from token ids, score responses.

    from internvl35 import InternVL
    vl = InternVL.from_pretrained()                       # the bundled internvl35-tiny
    vl.chat("What is the sum of the digits?", images=["digits.png"])
    vl = InternVL.from_pretrained("path/to/InternVL3_5-8B", dtype="bfloat16", device="cuda")

One engine per model serves chat, batched chat and raw generation; the CLI calls these same methods.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from internvl35.checkpoint import build_model, load_model
from internvl35.data.chat import Message
from internvl35.data.image import load_image
from internvl35.data.inputs import ModelInputs, build_inputs
from internvl35.data.tokenizer import ChatTokenizer, tiny_tokenizer
from internvl35.data.video import load_video_frames
from internvl35.engine.engine import (
    DEFAULT_IMAGE_CACHE_BYTES, DEFAULT_PREFIX_CACHE_BYTES, Engine, Request, RequestOutput,
)
from internvl35.engine.sampling import SamplingParams
from internvl35.engine.scoring import score
from internvl35.model.internvl import InternVLModel
from internvl35.presets import TINY as TINY_PRESETS
from internvl35.presets import preset

BUNDLED = Path(__file__).parent / "assets" / "internvl35-tiny"
ImageLike = str | Path | bytes | Image.Image
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA, fp32 elsewhere (CPU bf16 matmuls are slow on most machines)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """A device torch knows and this machine has (checked before any weight is read)."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{device}: CUDA is not available on this machine; use the CPU")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"{device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


class InternVL:
    def __init__(self, model: InternVLModel, tokenizer: ChatTokenizer, *, max_batch_size: int = 16,
                 max_seq_len: int | None = None, image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES) -> None:
        if model.config.image_token_id is not None and model.config.image_token_id != tokenizer.img_context_id:
            raise ValueError(f"the model's image_token_id {model.config.image_token_id} is not the tokenizer's "
                             f"<IMG_CONTEXT> id {tokenizer.img_context_id}: tokenizer and weights do not belong together")
        self.model, self.tokenizer, self.config = model, tokenizer, model.config
        self.engine = Engine(model, eos_token_ids=[tokenizer.im_end_id, tokenizer.pad_id], detokenize=tokenizer.decode,
                             max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                             image_cache_bytes=image_cache_bytes, prefix_cache_bytes=prefix_cache_bytes)

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, dtype: str | torch.dtype = "auto",
                        device: str | torch.device = "cpu", **engine_kw) -> InternVL:
        """A checkpoint directory (either layout), a tiny test preset (random weights), or None: the bundled model."""
        device = resolve_device(device)
        path = Path(source) if source is not None else BUNDLED
        if source is not None and str(source) in TINY_PRESETS:
            tok = tiny_tokenizer()
            config = preset(str(source)).replace(image_token_id=tok.img_context_id)
            return cls(build_model(config, dtype=resolve_dtype(dtype, device), device=device), tok, **engine_kw)
        if not path.is_dir():
            hint = " (the bundled model is missing: reinstall the package)" if source is None else ""
            raise FileNotFoundError(f"model directory {path} does not exist{hint}")
        tok = ChatTokenizer.from_dir(path)
        model = load_model(path, resolve_dtype(dtype, device), device, image_token_id=tok.img_context_id)
        return cls(model, tok, **engine_kw)

    # ---- inputs ----------------------------------------------------------------------------------------

    def prepare(self, question: str, images: Sequence[ImageLike] = (), *, video: ImageLike | Sequence[ImageLike] | None = None,
                num_frames: int = 8, history: Sequence[Message | tuple[str, str]] = (), system: str | None = None,
                thinking: bool = False) -> ModelInputs:
        """Prompt ids + pixel tiles for one question (images are loaded and checked here)."""
        if video is not None:
            if images:
                raise ValueError("give images or a video, not both")
            frames = load_video_frames(video, num_segments=num_frames)
            return build_inputs(self.tokenizer, self.config, question, frames, history=history, system=system,
                                thinking=thinking, video=True)
        if isinstance(images, (str, bytes, PathLike)) or not isinstance(images, Sequence):
            raise ValueError(f"images must be a list of images (paths or PIL images), got {type(images).__name__}; "
                             "for one image pass [image]")
        loaded = [load_image(im) for im in images]
        return build_inputs(self.tokenizer, self.config, question, loaded, history=history, system=system,
                            thinking=thinking)

    def _request(self, inputs: ModelInputs, params: SamplingParams) -> Request:
        return Request(inputs.input_ids, params, pixel_values=inputs.pixel_values)

    # ---- chat ------------------------------------------------------------------------------------------

    def chat(self, question: str, images: Sequence[ImageLike] = (), *, params: SamplingParams | None = None,
             **kw) -> str:
        """Answer one question about images (or a video: `video=...`); greedy unless params say otherwise."""
        return self.batch_chat([question], [images], params=params, **kw)[0]

    def batch_chat(self, questions: Sequence[str], images: Sequence[Sequence[ImageLike]] | None = None, *,
                   params: SamplingParams | None = None, progress: bool = False, **kw) -> list[str]:
        """Several questions in one continuously batched run; answers in input order."""
        images = images if images is not None else [()] * len(questions)
        if len(images) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(images)} image lists")
        params = params or SamplingParams()
        requests = [self._request(self.prepare(q, ims, **kw), params) for q, ims in zip(questions, images)]
        return [self.output_text(out) for out in self.engine.generate(requests, progress=progress)]

    def stream_chat(self, question: str, images: Sequence[ImageLike] = (), *, params: SamplingParams | None = None,
                    **kw) -> Iterator[str]:
        """Yield text pieces as they are generated; they join to exactly what `chat` returns."""
        request = self._request(self.prepare(question, images, **kw), params or SamplingParams())
        decoder = self.tokenizer.stream_decoder()
        sent = ""
        # The engine never emits a token that could belong to a stop string, so the pieces need no
        # stop handling here; only a stop string starting inside a token leaves a tail for the end.
        for out in self.engine.stream_outputs(request):
            piece = self.output_text(out)[len(sent):] if out.finished else decoder.feed(out.new_token_ids)
            if piece:
                sent += piece
                yield piece

    def output_text(self, out: RequestOutput) -> str:
        """The answer text of a finished request (exactly cut before a stop string, if one matched)."""
        return out.text if out.text is not None else self.tokenizer.decode(out.token_ids)

    # ---- token level -------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None,
                 pixel_values: Sequence[Tensor | None] | None = None, progress: bool = False) -> list[list[int]]:
        """Raw generation over token ids (pixel tiles per prompt optional); returns the new token ids."""
        pixel_values = pixel_values if pixel_values is not None else [None] * len(prompts)
        if len(pixel_values) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(pixel_values)} pixel_values entries")
        params = params or SamplingParams()
        requests = [Request(list(p), params, pixel_values=px) for p, px in zip(prompts, pixel_values)]
        return [out.token_ids for out in self.engine.generate(requests, progress=progress)]

    def logprobs(self, prompts: Sequence[ModelInputs], responses: Sequence[Sequence[int]]) -> list[Tensor]:
        """Per-token log p(response_t | prompt, response_<t) of each response, in one batched forward."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        sequences = [(list(p.input_ids) + list(r), len(p.input_ids)) for p, r in zip(prompts, responses)]
        return score(self.model, sequences, [p.pixel_values for p in prompts])


__all__ = ["InternVL", "SamplingParams"]
