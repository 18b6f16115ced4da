"""Supervised fine-tuning (and training from scratch) of InternVL3.5-architecture models.

Variant: next-token prediction on assistant tokens with square averaging (SYSTEM.md section 8), packed
sequences with attention confined to each sample, AdamW, linear warm-up then cosine decay, gradient
accumulation over the micro-batches of one global batch (the loss denominator is the global batch's
weight sum, so accumulation is exact), freezing of ViT / MLP / LLM (the MLP warm-up stage freezes ViT and
LLM). Checkpoints are atomic and resume exactly: data is a deterministic function of the example index.

Launch: `internvl35 train sft ...` or `internvl35 train recipe tiny` on one process. Several processes
(torchrun + FSDP2) are on the roadmap; the loss already averages its denominator across ranks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from internvl35.model.internvl import InternVLModel
from internvl35.train.loss import anchor_loss, class_balanced_weights, global_weight_sum, weighted_ce
from internvl35.train.packing import Batch, TrainExample, collate, pack
from internvl35.train.state import latest_checkpoint, load_train_state, save_train_state

ExampleSource = Callable[[int], TrainExample]  # example index -> example, deterministic
# Trainable parts by parameter-name prefix. "embed" (the word embeddings; with tied embeddings also the output head)
# lies inside "llm": freezing or scaling "llm" covers it unless "embed" is named itself.
PARTS = {"vit": "vision_model", "mlp": "mlp1", "llm": "language_model", "embed": "language_model.model.embed_tokens"}


def _under(name: str, part: str) -> bool:
    prefix = PARTS[part]
    return name == prefix or name.startswith(prefix + ".")


def part_of(name: str) -> str:
    """The most specific part a parameter belongs to."""
    return max((p for p in PARTS if _under(name, p)), key=lambda p: len(PARTS[p]))


def part_scale(part: str, lr_scale: dict[str, float]) -> float:
    """The learning-rate scale of a part: its own, else that of the nearest part enclosing it, else 1."""
    enclosing = [p for p in lr_scale if _under(PARTS[part], p)]
    return lr_scale[max(enclosing, key=lambda p: len(PARTS[p]))] if enclosing else 1.0


@dataclass
class SFTConfig:
    out_dir: str
    steps: int
    examples_per_step: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    packing: bool = True
    pack_tokens: int = 2048  # row length when packing
    rows_per_micro: int = 4  # rows per forward (padding mode: examples per forward)
    averaging: str = "square"
    # Weight of the anchor loss (`loss.anchor_loss`) on examples whose image tokens carry their words
    # (`TaskMix.anchor_families`): it keeps those tokens at the word embeddings the language model reads.
    anchor_weight: float = 0.0
    freeze: tuple[str, ...] = ()
    lr_scale: dict[str, float] = field(default_factory=dict)  # per part, e.g. {"vit": 0.2} for a pretrained ViT
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    start_example: int = 0  # first example index (lets stages continue the data stream)
    progress: bool = True
    extra: dict = field(default_factory=dict)  # recorded in metrics, e.g. the recipe name

    def __post_init__(self) -> None:
        bad = [f for f in self.freeze if f not in PARTS]
        if bad:
            raise ValueError(f"cannot freeze {bad}: choose from {sorted(PARTS)}")
        bad = [f for f in self.lr_scale if f not in PARTS]
        if bad:
            raise ValueError(f"no learning-rate scale for {bad}: choose from {sorted(PARTS)}")
        if self.steps <= 0 or self.examples_per_step <= 0:
            raise ValueError(f"steps ({self.steps}) and examples_per_step ({self.examples_per_step}) must be positive")


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at the last step."""
    warmup = max(1, round(cfg.warmup_ratio * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_trainable(model: InternVLModel, freeze: Iterable[str]) -> None:
    freeze = tuple(freeze)
    for name, p in model.named_parameters():
        p.requires_grad_(not any(_under(name, part) for part in freeze))


def make_optimizer(model: InternVLModel, cfg: SFTConfig) -> torch.optim.AdamW:
    """AdamW with one group per (part, decay or not); each group's `lr_scale` multiplies the schedule's lr."""
    groups = []
    for part in PARTS:
        params = [p for name, p in model.named_parameters() if p.requires_grad and part_of(name) == part]
        scale = part_scale(part, cfg.lr_scale)
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]  # norms, biases, layer scales
        groups += [{"params": ps, "weight_decay": wd, "lr_scale": scale}
                   for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)) if ps]
    if not groups:
        raise ValueError("every part is frozen: nothing to train")
    # The fused kernel updates all parameters in one pass (the default CPU path loops per tensor).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def micro_batches(examples: list[TrainExample], cfg: SFTConfig, pad_id: int = 0) -> list[Batch]:
    rows = pack(examples, cfg.pack_tokens) if cfg.packing else [[ex] for ex in examples]
    return [collate(rows[i:i + cfg.rows_per_micro], cfg.averaging, pad_id) for i in range(0, len(rows), cfg.rows_per_micro)]


def train_step(model: InternVLModel, opt: torch.optim.Optimizer, batches: list[Batch], lr: float, grad_clip: float,
               anchor_weight: float = 0.0) -> dict:
    """One optimizer step over all micro-batches of a global batch; returns metrics."""
    device = next(model.parameters()).device
    batches = [b.to(device) for b in batches]
    denominator = global_weight_sum(torch.stack([b.weights.sum() for b in batches]))
    anchored = [_anchor_words(model, b) if anchor_weight else None for b in batches]
    anchor_weights, words_present = class_balanced_weights([w for w in anchored if w is not None])
    anchor_weights = iter(anchor_weights)
    anchor_denominator = words_present.clamp_min(1)  # one process; ranks would need a shared word count
    total_tokens = sum(b.num_tokens for b in batches)
    loss_sum = anchor_sum = 0.0
    for b, words in zip(batches, anchored):
        images = model.encode_images(b.pixel_values) if b.pixel_values is not None and len(b.pixel_values) else None
        out = model(b.input_ids, image_features=images, attn=b.attn)
        loss = weighted_ce(out.logits, b.targets, b.weights, denominator)
        if out.aux_loss is not None:
            loss = loss + model.config.text.router_aux_loss_coef * out.aux_loss * b.num_tokens / total_tokens
        loss_sum += loss.item()  # the language loss; the anchor is reported on its own
        if words is not None:
            anchor = anchor_loss(images.embeds, words, model.language_model.model.embed_tokens.weight,
                                 next(anchor_weights), anchor_denominator)
            anchor_sum += anchor.item()
            loss = loss + anchor_weight * anchor
        loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else torch.tensor(0.0)
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    metrics = {"loss": loss_sum, "grad_norm": float(grad_norm), "lr": lr, "tokens": total_tokens}
    return {**metrics, "anchor": anchor_sum} if anchor_weight else metrics


def _anchor_words(model: InternVLModel, batch: Batch) -> Tensor | None:
    """The word each image feature row of the batch should read as (IGNORE_INDEX where unknown), in row order."""
    if batch.image_words is None:
        return None
    return batch.image_words[batch.input_ids == model.image_token_id]


class SFTTrainer:
    def __init__(self, model: InternVLModel, source: ExampleSource, cfg: SFTConfig, pad_id: int = 0) -> None:
        self.model, self.source, self.cfg, self.pad_id = model, source, cfg, pad_id
        self.out = Path(cfg.out_dir)
        set_trainable(model, cfg.freeze)
        self.opt = make_optimizer(model, cfg)
        self.step = 0

    def examples(self, step: int) -> list[TrainExample]:
        start = self.cfg.start_example + step * self.cfg.examples_per_step
        return [self.source(i) for i in range(start, start + self.cfg.examples_per_step)]

    def resume(self) -> bool:
        last = latest_checkpoint(self.out / "checkpoints")
        if last is not None:
            self.step = load_train_state(last, self.model, self.opt)["step"]
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # drop lines of steps that will be recomputed (all of them if no checkpoint was saved)
            lines = [l for l in metrics.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= self.step]
            metrics.write_text("".join(l + "\n" for l in lines))
        return last is not None

    def save(self) -> Path:
        return save_train_state(self.out / "checkpoints", self.model, self.opt,
                                {"step": self.step, "config": asdict(self.cfg)}, self.cfg.keep_checkpoints)

    def log(self, metrics: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def run(self, stop_after: int | None = None) -> InternVLModel:
        """Train to cfg.steps (resuming if a checkpoint exists); `stop_after` simulates an interruption."""
        self.out.mkdir(parents=True, exist_ok=True)
        # Tiny values (e.g. Adam's second moments) can drift into the denormal range, where CPU
        # arithmetic is far slower; flush them to zero (numerically negligible).
        torch.set_flush_denormal(True)
        self.resume()
        self.model.train()
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not self.cfg.progress, desc="sft", unit="step")
        while self.step < self.cfg.steps:
            if stop_after is not None and self.step >= stop_after:
                break
            t0 = time.perf_counter()
            batches = micro_batches(self.examples(self.step), self.cfg, self.pad_id)
            m = train_step(self.model, self.opt, batches, lr_at(self.step, self.cfg), self.cfg.grad_clip,
                           self.cfg.anchor_weight)
            self.step += 1
            m.update(step=self.step, tokens_per_s=m["tokens"] / (time.perf_counter() - t0), **self.cfg.extra)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                self.log(m)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                self.save()
        bar.close()
        self.model.eval()
        plot_loss(self.out / "metrics.jsonl", self.out / "loss.png")
        return self.model


def plot_loss(metrics: Path, png: Path) -> None:
    """Loss curve from metrics.jsonl (skipped quietly if matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    if not metrics.exists():
        return
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set(xlabel="step", ylabel="loss", title="SFT loss", yscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
