"""Images + conversation -> model inputs: the one place where tiling, the chat template and the image-token
count meet. Inference (API, engine, servers) and training (SFT, RL) both build their inputs here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from internvl35.config import InternVLConfig
from internvl35.data.chat import Message, build_messages, tokenize_conversation
from internvl35.data.tiling import preprocess_images
from internvl35.data.tokenizer import ChatTokenizer


@dataclass
class ModelInputs:
    input_ids: list[int]
    labels: list[int] | None  # aligned with input_ids; IGNORE_INDEX where unsupervised
    pixel_values: Tensor | None  # (tiles, 3, tile, tile), all images in prompt order
    tiles_per_image: list[int]


def image_tiles(images: Sequence[Image.Image], config: InternVLConfig, video: bool = False) -> list[Tensor]:
    """Tiles of each image under the checkpoint's tiling settings (video: one tile per frame)."""
    if video:
        return preprocess_images(images, tile=config.vision.image_size, max_num=len(images) or 1,
                                 use_thumbnail=False, dynamic=False)
    return preprocess_images(images, tile=config.vision.image_size, max_num=config.max_dynamic_patch,
                             min_num=config.min_dynamic_patch, use_thumbnail=config.use_thumbnail,
                             dynamic=config.dynamic_image_size)


def build_inputs(
    tokenizer: ChatTokenizer,
    config: InternVLConfig,
    question: str,
    images: Sequence[Image.Image] = (),
    *,
    history: Sequence[Message | tuple[str, str]] = (),
    system: str | None = None,
    thinking: bool = False,
    video: bool = False,
    answer: str | None = None,
    tiles: Sequence[Tensor] | None = None,
) -> ModelInputs:
    """Tokenised prompt (+ labels when `answer` is given) and pixel tiles.

    Each image placeholder becomes `<img>` + `<IMG_CONTEXT>` x (tokens_per_tile x tiles) + `</img>`.
    Pass precomputed `tiles` to skip tiling (e.g. augmented images prepared elsewhere).
    """
    tiles = list(tiles) if tiles is not None else image_tiles(images, config, video)
    n = len(tiles)
    # Images shown in an earlier turn keep their placeholders there (as in InternVL's multi-turn chat).
    in_history = sum((m if isinstance(m, Message) else Message("user", m[0])).images for m in history)
    if in_history and in_history != n:
        raise ValueError(f"the history holds {in_history} <image> placeholder(s) but {n} image(s) were given")
    new = 0 if in_history else n
    messages = build_messages(question, num_images=0 if video else new, video_frames=new if video else 0,
                              history=history, system=system, thinking=thinking)
    if answer is not None:
        messages.append(Message("assistant", answer))
    counts = [[config.tokens_per_tile] * t.shape[0] for t in tiles]
    prompt = tokenize_conversation(tokenizer, messages, counts, add_generation_prompt=answer is None,
                                   with_labels=answer is not None)
    pixels = torch.cat(tiles) if tiles else None
    return ModelInputs(prompt.input_ids, prompt.labels, pixels, [t.shape[0] for t in tiles])
