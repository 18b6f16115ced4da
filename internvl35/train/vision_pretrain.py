"""Stage 0: dense supervised pretraining of the vision tower, for models trained from nothing.

The released InternVL models start from a pretrained InternViT. A from-scratch model has none, and
learning to see only through the language loss is slow: the first internvl35-tiny, after 1,500 SFT
steps, counted digits but could not read them. This stage stands in for InternViT's pretraining: the
ViT plus a throw-away linear head labels every image token with what covers it ("background",
"digit 7", "red circle"), a signal on every token of every image instead of a few answer tokens per
sample. The head reads the pixel-shuffled features, the very tokens the language model will see
(each the concatenation of 2x2 neighbouring patches at downsample ratio 0.5).

Scenes come from the task families' `dense(seed)` generators (train seeds only, so the digit scans
held out for testing stay unseen); `evaluate_dense` scores held-out scenes. Stage 0b (`align_projector`)
reuses the same scenes and loop to align the projector with the word embeddings.

    vit_metrics = pretrain_vision(model.vision_model, VisionPretrainConfig(steps=300))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from internvl35.data.chat import IGNORE_INDEX
from internvl35.data.tiling import to_tensor
from internvl35.data.tokenizer import ChatTokenizer
from internvl35.model.internvl import InternVLModel
from internvl35.model.projector import pixel_shuffle
from internvl35.model.vision import InternViT
from internvl35.tasks import chart, digits, shapes
from internvl35.tasks.base import TEST_SEED_START
from internvl35.train.loss import anchor_loss, class_balanced_weights

Box = tuple[int, int, int, int]
DenseScene = Callable[[int, int], tuple[Image.Image, list[tuple[Box, str]]]]  # (seed, size) -> image, labelled boxes
SCENES: dict[str, DenseScene] = {"digits": digits.dense, "shapes": shapes.dense, "chart": chart.dense}
FAMILY_INDEX = {name: i for i, name in enumerate(SCENES)}
DIGIT_LABELS = tuple(f"digit {d}" for d in range(10))
SHAPE_LABELS = tuple(f"{c} {s}" for c in shapes.COLOURS for s in shapes.SHAPES)
LABELS = ("background", *DIGIT_LABELS, *SHAPE_LABELS)
LABEL_ID = {name: i for i, name in enumerate(LABELS)}


@dataclass
class VisionPretrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.05
    families: tuple[str, ...] = ("digits", "shapes")
    background_weight: float = 0.2  # most patches are empty; down-weight them so objects drive the loss
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in SCENES]
        if unknown:
            raise ValueError(f"no dense scenes for {unknown}: choose from {sorted(SCENES)}")


def patch_labels(boxes: list[tuple[Box, str]], size: int, patch: int) -> np.ndarray:
    """(g*g,) label ids, row-major: a cell of `patch` px takes the label of the box containing its centre.

    A box too small to contain any cell's centre labels the cell containing its own centre instead, so that every
    labelled thing reaches at least one token.
    """
    g = size // patch
    centres = (np.arange(g) + 0.5) * patch
    out = np.zeros((g, g), dtype=np.int64)
    for (x0, y0, x1, y1), name in boxes:
        rows = (centres >= y0) & (centres < y1)
        cols = (centres >= x0) & (centres < x1)
        if not rows.any() or not cols.any():
            rows, cols = [min(g - 1, int((y0 + y1) / 2 // patch))], [min(g - 1, int((x0 + x1) / 2 // patch))]
        out[np.ix_(rows, cols)] = LABEL_ID[name]
    return out.reshape(-1)


def dense_batch(seeds: list[int], families: tuple[str, ...], size: int, patch: int) -> tuple[Tensor, Tensor]:
    """Pixels (B, 3, size, size) and labels (B, g*g) of `patch`-px cells; seed s draws family s % len(families)."""
    images, labels = [], []
    for s in seeds:
        image, boxes = SCENES[families[s % len(families)]](s, size)
        images.append(image)
        labels.append(patch_labels(boxes, size, patch))
    return to_tensor(images), torch.from_numpy(np.stack(labels))


def _lr(step: int, cfg: VisionPretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


TokenLogits = Callable[[Tensor], Tensor]  # pixels (B, 3, S, S) -> per-token label scores (B, tokens, len(LABELS))
TokenLoss = Callable[[Tensor, Tensor], Tensor]  # pixels (B, 3, S, S), labels (B, tokens) -> scalar loss


def dense_ce(logits: Tensor, labels: Tensor, background_weight: float) -> Tensor:
    """Cross-entropy of token labels, the background down-weighted (most tokens are background)."""
    class_weight = torch.ones(logits.shape[-1], device=logits.device)
    class_weight[LABEL_ID["background"]] = background_weight
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), weight=class_weight)


def _train_dense(cfg: VisionPretrainConfig, params: list[Tensor], token_loss: TokenLoss, image_size: int,
                 cell: int, desc: str) -> float:
    """The loop both stages share: a loss of token labels on train scenes; returns the last loss."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95), fused=True)
    device = params[0].device
    loss = torch.tensor(float("nan"))
    bar = tqdm(range(cfg.steps), disable=not cfg.progress, desc=desc, unit="step")
    for step in bar:
        seeds = list(range(step * cfg.batch_size, (step + 1) * cfg.batch_size))
        pixels, labels = dense_batch(seeds, cfg.families, image_size, cell)
        loss = token_loss(pixels.to(device), labels.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return loss.item()


@torch.no_grad()
def evaluate_dense(token_logits: TokenLogits, families: tuple[str, ...], image_size: int, cell: int,
                   n: int = 64) -> dict:
    """Token accuracy on held-out scenes: over all tokens, over the covered (non-background) ones, and over those
    of each family."""
    seeds = list(range(TEST_SEED_START, TEST_SEED_START + n))
    pixels, labels = dense_batch(seeds, families, image_size, cell)
    pred = token_logits(pixels).argmax(-1).cpu()
    right, covered = pred == labels, labels > 0
    out = {"token_accuracy": float(right.float().mean()),
           "object_token_accuracy": float(right[covered].float().mean())}
    family_of = torch.tensor([FAMILY_INDEX[families[s % len(families)]] for s in seeds])
    for name in dict.fromkeys(families):
        mine = covered & (family_of == FAMILY_INDEX[name])[:, None]
        out[f"object_token_accuracy/{name}"] = float(right[mine].float().mean())
    return out


def pretrain_vision(vit: InternViT, cfg: VisionPretrainConfig, downsample_ratio: float = 0.5) -> dict:
    """Train `vit` in place on dense token labels; returns the last loss and held-out token accuracy.

    downsample_ratio: the model's pixel shuffle, so the head labels exactly the tokens the LLM gets.
    """
    weight = next(vit.parameters())
    head = nn.Linear(_token_dim(vit, downsample_ratio), len(LABELS)).to(weight.device, weight.dtype)

    def token_logits(pixels: Tensor) -> Tensor:
        return head(pixel_shuffle(vit(pixels.to(weight.device, weight.dtype)), downsample_ratio))

    size, cell = vit.config.image_size, token_px(vit.config.patch_size, downsample_ratio)
    t0 = time.perf_counter()
    vit.train()
    loss = _train_dense(cfg, [*vit.parameters(), *head.parameters()],
                        lambda pixels, labels: dense_ce(token_logits(pixels), labels, cfg.background_weight),
                        size, cell, "vision pretrain")
    vit.eval()
    return {"loss": loss, "seconds": time.perf_counter() - t0,
            **evaluate_dense(token_logits, cfg.families, size, cell)}


def token_px(patch_size: int, ratio: float) -> int:
    """Side in pixels of the square one image token covers (28 px for 14-px patches at ratio 0.5)."""
    return round(patch_size / ratio)


def _token_dim(vit: InternViT, ratio: float) -> int:
    return round(vit.config.hidden_size / ratio**2)


# ---- stage 0b: align the projector with the word embeddings ------------------------------------------------


@dataclass
class AlignConfig(VisionPretrainConfig):
    steps: int = 150
    lr: float = 2e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    # Weight of the anchor loss (`train.loss.anchor_loss`) on background and digit tokens: it holds each image token
    # near its word's embedding, not only scoring it highest. Cross-entropy alone grows the tokens without bound:
    # they ended ~130x longer than the word embeddings, and such tokens barely move under the language model's
    # layers (docs/results.md, E31-E34). 0 = cross-entropy only.
    anchor_weight: float = 0.0
    # Multiplies the readout's logits (token . word). With the anchor, tokens and words meet where the logit gaps make
    # the cross-entropy small, so the scale sets the words' norm: digit words end at 2.2 with 1, 1.0 with 16 and 0.55
    # with 64, where cross-entropy alone leaves them at 0.52 (and the tokens at 69). The words warm-up learned slower
    # at 2.2 (docs/results.md, E34).
    logit_scale: float = 1.0


def own_token(name: str) -> str:
    """The added token naming a whole label: "<|red circle|>" for "red circle"."""
    return f"<|{name}|>"


# A model's own words for labels that no one word names, one added token each. A colour + shape: one token then
# names both, where the colour word alone would erase the shape. Tokenizers trained with them
# (`train_tokenizer(..., extra_special=...)`) read such image tokens as these; others fall back to one word of the
# label, which is then not anchored.
SHAPE_TOKENS = tuple(own_token(name) for name in SHAPE_LABELS)


def _label_word(tokenizer: ChatTokenizer, name: str) -> tuple[int, bool]:
    """(the word id label `name` reads as, whether that word names the whole label)."""
    if name == "background":
        return tokenizer.encode_text(".")[0], True
    if name.startswith("digit"):
        return tokenizer.encode_text(name.split()[-1])[0], True
    added = tokenizer.added_token_ids
    if own_token(name) in added:
        return added[own_token(name)], True
    return tokenizer.encode_text(name.split()[0])[0], False  # a shape's colour


def _label_parts(tokenizer: ChatTokenizer, name: str) -> list[list[int]]:
    """The words whose embeddings, each the mean of its tokens, average to where label `name`'s tokens go."""
    word, exact = _label_word(tokenizer, name)
    if not exact or name == "background" or name.startswith("digit"):
        return [[word]]
    colour, shape = name.split()  # the answer's first token ("purple") and the shape as questions name it
    return [tokenizer.encode_text(colour)[:1], tokenizer.encode_text(" " + shape)[:1]]


def label_mixture(tokenizer: ChatTokenizer) -> Tensor:
    """(len(LABELS), vocab) weights, rows summing to 1: row @ embeddings is where stage 0b puts the label's tokens.

    A digit or the background: its word. A label with its own token (`own_token`), the mean of its parts: a shape's
    colour and shape words, so the token is found by the shape and answers with the colour. 0b writes that mean
    as the own token's embedding. Without own tokens: the one word the label falls back to (not anchored).
    """
    mix = torch.zeros(len(LABELS), tokenizer.vocab_size)
    for i, name in enumerate(LABELS):
        parts = _label_parts(tokenizer, name)
        for ids in parts:
            for t in ids:  # one at a time: a word may repeat a token
                mix[i, t] += 1 / (len(parts) * len(ids))
    return mix


def own_labels(tokenizer: ChatTokenizer) -> Tensor:
    """(len(LABELS),) bool: labels read as one of the model's own added tokens, whose embedding 0b writes."""
    added = tokenizer.added_token_ids
    return torch.tensor([own_token(name) in added for name in LABELS])


def label_words(tokenizer: ChatTokenizer) -> Tensor:
    """The word token each label reads as: "7" for "digit 7", "." for background and "<|red circle|>" for "red
    circle" (or, with a tokenizer without own tokens, "red")."""
    return torch.tensor([_label_word(tokenizer, name)[0] for name in LABELS])


def exact_labels(tokenizer: ChatTokenizer) -> Tensor:
    """(len(LABELS),) bool: whether the label's word names all of it, so that a token can be written as, and
    held at, that word (False only for shapes read as their colour)."""
    return torch.tensor([_label_word(tokenizer, name)[1] for name in LABELS])


def projected_tokens(model: InternVLModel) -> Callable[[Tensor], Tensor]:
    """Pixels -> image tokens as the language model gets them, through the frozen ViT and the trainable mlp1."""
    vit, ratio = model.vision_model, model.config.downsample_ratio

    weight = next(vit.parameters())

    def tokens(pixels: Tensor) -> Tensor:
        with torch.no_grad():
            feats = pixel_shuffle(vit(pixels.to(weight.device, weight.dtype)), ratio)
        return model.mlp1(feats)

    return tokens


def aligned_token_logits(model: InternVLModel, targets: Tensor) -> TokenLogits:
    """Stage 0b's readout: each image token's scores of the label words `targets` under the tied output head."""
    tokens = projected_tokens(model)
    return lambda pixels: F.linear(tokens(pixels), model.language_model.output_weight)[..., targets]


def align_projector(model: InternVLModel, tokenizer: ChatTokenizer, cfg: AlignConfig) -> dict:
    """Train mlp1 and the word embeddings so each image token scores its label's word under the tied output head.

    With tied embeddings the output head *is* the embedding table, so afterwards an image token of a
    "7" enters the language model close to the text token "7", and anything that moves it to the
    answer position already predicts "7". The random language model then only has to learn where to
    look, not also what the features mean: the slow part of learning to read from scratch. With
    `cfg.anchor_weight`, tokens are also held near their words' embeddings where the word names the whole
    label (`exact_labels`: not shapes read as their colour, which would erase the shape).
    Needs tied embeddings; the ViT stays frozen (stage 0 trained it).
    """
    lm = model.language_model
    if lm.lm_head is not None:
        raise ValueError("projector alignment needs tied word embeddings (tie_word_embeddings=True)")
    vit = model.vision_model
    head_weight = lm.output_weight
    words, exact, own = (t.to(head_weight.device) for t in (label_words(tokenizer), exact_labels(tokenizer),
                                                        own_labels(tokenizer)))
    mixture = label_mixture(tokenizer).to(head_weight.device, head_weight.dtype)
    tokens = projected_tokens(model)

    def targets() -> Tensor:
        """(labels, D): each label's target, the mean of its parts' embeddings (a word's own embedding for
        digits and the background)."""
        return mixture @ lm.output_weight

    def token_loss(pixels: Tensor, labels: Tensor) -> Tensor:
        x, table = tokens(pixels), targets()
        loss = dense_ce(cfg.logit_scale * F.linear(x, table), labels, cfg.background_weight)
        if cfg.anchor_weight:
            named = torch.where(exact[labels], labels, IGNORE_INDEX).flatten()
            [weights], present = class_balanced_weights([named])
            loss = loss + cfg.anchor_weight * anchor_loss(x.flatten(0, 1), named, table, weights, present)
        return loss

    size, cell = vit.config.image_size, token_px(vit.config.patch_size, model.config.downsample_ratio)
    t0 = time.perf_counter()
    vit.eval()
    loss = _train_dense(cfg, [*model.mlp1.parameters(), lm.output_weight], token_loss, size, cell,
                        "projector alignment")
    with torch.no_grad():  # an own token's embedding becomes the mean its image tokens were held at
        lm.output_weight[words[own]] = mixture[own] @ lm.output_weight
    return {"loss": loss, "seconds": time.perf_counter() - t0,
            **evaluate_dense(aligned_token_logits(model, words), cfg.families, size, cell)}
