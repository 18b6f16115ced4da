"""Recipes: everything needed to train a named model from nothing, in one call.

`tiny` builds internvl35-tiny, the bundled default model: a BPE tokenizer trained on the task text, an
InternVL3.5-architecture model at 224 px tiles (InternViT -> pixel shuffle 0.5 -> mlp1 -> Qwen3), trained
from scratch by SFT on the synthetic task mix, sized so that the whole run fits in ~45 minutes on a
2-core CPU. Departures from the paper, all for size: tiles of 224 px (64 tokens), a 2-6 tile budget,
random initialisation instead of a pretrained ViT/LLM, no separate MLP warm-up stage (nothing is
pretrained, so every part trains from step 0).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from internvl35.atomic import atomic_write_text
from internvl35.checkpoint import build_model, save_checkpoint
from internvl35.config import InternVLConfig, TextConfig, VisionConfig
from internvl35.data.chat import DEFAULT_SYSTEM_PROMPT, THINKING_SYSTEM_PROMPT
from internvl35.data.tokenizer import ChatTokenizer, train_tokenizer
from internvl35.model.internvl import InternVLModel
from internvl35.train.data import TaskMix, TaskSource, corpus
from internvl35.train.sft import SFTConfig, SFTTrainer


@dataclass
class Recipe:
    name: str
    vision: VisionConfig
    text: TextConfig  # vocab_size is set from the trained tokenizer
    mix: TaskMix
    sft: dict = field(default_factory=dict)  # SFTConfig fields other than out_dir
    vocab_size: int = 1024
    max_dynamic_patch: int = 6
    tokenizer_samples: int = 400  # per family
    export_dtype: torch.dtype = torch.bfloat16  # halves the shipped file; loading upcasts on CPU


TINY = Recipe(
    name="internvl35-tiny",
    vision=VisionConfig(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768,
                        image_size=224, patch_size=14),
    text=TextConfig(vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                    rope_theta=10000.0, tie_word_embeddings=True),
    mix=TaskMix(weights=(4, 1, 1.5, 1, 1, 1), thinking_ratio=0.25),  # digits weighted up: the 90% target
    sft=dict(steps=1500, examples_per_step=24, lr=1.5e-3, warmup_ratio=0.03, min_lr_ratio=0.05, pack_tokens=1536,
             rows_per_micro=4, save_every=100),
)
RECIPES = {"tiny": TINY}


def build_tokenizer(recipe: Recipe) -> ChatTokenizer:
    texts = corpus(recipe.mix.families, recipe.tokenizer_samples)
    # The system prompts open every sample: frequent enough that BPE merges them into few tokens.
    texts += [DEFAULT_SYSTEM_PROMPT, THINKING_SYSTEM_PROMPT] * 1000 + ["system", "user", "assistant"] * 1000
    return train_tokenizer(texts, recipe.vocab_size)


def model_config(recipe: Recipe, tokenizer: ChatTokenizer) -> InternVLConfig:
    return InternVLConfig(vision=recipe.vision, text=replace(recipe.text, vocab_size=tokenizer.vocab_size),
                          max_dynamic_patch=recipe.max_dynamic_patch, image_token_id=tokenizer.img_context_id)


def run_recipe(recipe: Recipe, out_dir: str | Path, *, steps: int | None = None, seed: int = 0,
               progress: bool = True, export: str | Path | None = None) -> Path:
    """Train (or resume) under out_dir; write the final model to `export` (default out_dir/final)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = ChatTokenizer.from_dir(tok_dir)
    else:
        tokenizer = build_tokenizer(recipe)
        tokenizer.save(tok_dir)
    config = model_config(recipe, tokenizer)
    torch.manual_seed(seed)
    model = build_model(config)
    sft = SFTConfig(out_dir=str(out), progress=progress, extra={"recipe": recipe.name},
                    **{**recipe.sft, **({"steps": steps} if steps else {})})
    SFTTrainer(model, TaskSource(tokenizer, config, recipe.mix, seed), sft, pad_id=tokenizer.pad_id).run()
    final = Path(export) if export else out / "final"
    export_model(model, tokenizer, final, out, recipe.export_dtype,
                 {"recipe": recipe.name, "sft": asdict(sft), "mix": asdict(recipe.mix), "seed": seed})
    return final


def export_model(model: InternVLModel, tokenizer: ChatTokenizer, final: Path, run_dir: Path,
                 dtype: torch.dtype | None, meta: dict) -> None:
    """A self-contained model directory: weights, config, tokenizer, how it was trained, its loss curve."""
    save_checkpoint(model, final, dtype=dtype)
    tokenizer.save(final)
    atomic_write_text(final / "training.json", json.dumps(meta, indent=1, default=str))
    if (run_dir / "loss.png").exists():
        shutil.copy(run_dir / "loss.png", final / "loss.png")
