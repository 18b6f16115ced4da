"""How close stage 0b leaves the image tokens to the word embeddings they should read as.

    python scripts/image_token_norms.py RUN_DIR [--state CKPT/model.safetensors]

Loads RUN_DIR's tokenizer and its stage 0 and 0b weights (`vision_pretrain.safetensors`, `align.safetensors`;
`--state` loads a full model state over them, e.g. a bridge checkpoint), encodes 32 held-out digit sheets and
prints, for glyph and background tokens: the relative squared error ||token - word||^2 / ||word||^2, the mean
norms of tokens and words, their cosine, and the share of glyph tokens nearest (in distance) to their own word
among "." and the digits (docs/results.md, sixth session).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internvl35.checkpoint import build_model  # noqa: E402
from internvl35.data.tokenizer import ChatTokenizer  # noqa: E402
from internvl35.tasks.base import TEST_SEED_START  # noqa: E402
from internvl35.train.recipe import TINY, model_config  # noqa: E402
from internvl35.train.vision_pretrain import LABEL_ID, dense_batch, label_words, token_px  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--state", default=None)
    a = ap.parse_args()
    tok = ChatTokenizer.from_dir(a.run / "tokenizer")
    model = build_model(model_config(TINY, tok))
    for stage in ("vision_pretrain", "align"):
        model.load_state_dict(load_file(str(a.run / f"{stage}.safetensors")), strict=False)
    if a.state:
        model.load_state_dict(load_file(a.state))
    size = model.config.vision.image_size
    cell = token_px(model.config.vision.patch_size, model.config.downsample_ratio)
    pixels, labels = dense_batch(list(range(TEST_SEED_START, TEST_SEED_START + 32)), ("digits",), size, cell)
    words = label_words(tok)
    with torch.no_grad():
        tokens = model.encode_images(pixels).embeds.view(*labels.shape, -1)
        table = model.language_model.model.embed_tokens.weight
        target = table[words[labels]]
        rel = (tokens - target).pow(2).sum(-1) / target.pow(2).sum(-1)
        cos = torch.nn.functional.cosine_similarity(tokens, target, dim=-1)
        nearest = torch.cdist(tokens.flatten(0, 1), table[words[: LABEL_ID["digit 9"] + 1]]).argmin(-1).view_as(labels)
    for name, where in (("glyph", labels > 0), ("background", labels == 0)):
        print(f"{name}: relative squared error {rel[where].mean():.4f}, token norm {tokens.norm(dim=-1)[where].mean():.3f}, "
              f"word norm {target.norm(dim=-1)[where].mean():.3f}, cosine {cos[where].mean():.3f}")
    glyphs = labels > 0
    print(f"glyph tokens nearest their own word: {(nearest[glyphs] == labels[glyphs]).float().mean():.2%}")


if __name__ == "__main__":
    main()
