"""Recipes: everything needed to train a named model from nothing, in one call.

`tiny` builds internvl35-tiny, the bundled default model: a BPE tokenizer trained on the task text, an
InternVL3.5-architecture model at 224 px tiles (InternViT -> pixel shuffle 0.5 -> mlp1 -> Qwen3), trained
from scratch by SFT on the synthetic task mix, sized so that the whole run fits in ~45 minutes on a
2-core CPU. Stages (each saved in the run directory, so a restarted run skips what is done):

0. vision pretraining (`train/vision_pretrain.py`): the ViT labels every image token of digit sheets
   and shape scenes, standing in for InternViT's own pretraining;
0b. projector alignment: mlp1 and the tied word embeddings learn to make each image token score its
   label's word ("7", "red") and, for digits and background, sit at that word's embedding (the anchor);
0c. optionally (`Recipe.warmup`), an SFT stage before stage 1, e.g. the language model alone on scenes
   written as words (`TaskMix.symbolic_ratio`);
0d. optionally (`Recipe.bridge`), an SFT stage on pixels with the language model frozen, so that mlp1 (and the
   ViT) learn to feed what the warm-up taught it;
1. SFT on the task mix, the ViT frozen (in TINY: its stage-0 features serve every family, and not
   back-propagating through it makes each step ~40% cheaper, which pays for 100 more steps);
2. optionally (`Recipe.focus`), a shorter SFT on a re-weighted mix.

Departures from the paper, all for size: tiles of 224 px (64 tokens), a 2-6 tile budget, a randomly
initialised LLM, and the MLP warm-up (here the bridge, 0d) placed after a words-only stage that gives the
language model something to be warmed up to.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from internvl35.atomic import atomic_path, atomic_write_text
from internvl35.checkpoint import build_model, save_checkpoint
from internvl35.config import InternVLConfig, TextConfig, VisionConfig
from internvl35.data.chat import DEFAULT_SYSTEM_PROMPT, THINKING_SYSTEM_PROMPT
from internvl35.data.tokenizer import ChatTokenizer, train_tokenizer
from internvl35.model.internvl import InternVLModel
from internvl35.train.data import TaskMix, TaskSource, corpus
from internvl35.train.sft import SFTConfig, SFTTrainer
from internvl35.train.state import latest_checkpoint
from internvl35.train.vision_pretrain import (
    SHAPE_TOKENS, AlignConfig, VisionPretrainConfig, align_projector, pretrain_vision,
)


@dataclass
class Recipe:
    name: str
    vision: VisionConfig
    text: TextConfig  # vocab_size is set from the trained tokenizer
    mix: TaskMix
    sft: dict = field(default_factory=dict)  # SFTConfig fields other than out_dir
    vision_pretrain: VisionPretrainConfig | None = None  # stage 0; None = SFT from a random ViT
    align: AlignConfig | None = None  # stage 0b: projector -> word embeddings (needs tied embeddings)
    # Extra SFT stages, each (mix, SFTConfig fields): `warmup` then `bridge` run before stage 1 (e.g. the language
    # model alone on symbolic scenes, then pixels with the language model frozen), `focus` after it (a shorter SFT on
    # a re-weighted mix).
    warmup: tuple[TaskMix, dict] | None = None
    bridge: tuple[TaskMix, dict] | None = None
    focus: tuple[TaskMix, dict] | None = None
    vocab_size: int = 1024  # the BPE's own tokens and the chat's special ones, not counting the own tokens below
    max_dynamic_patch: int = 6
    tokenizer_samples: int = 400  # per family
    export_dtype: torch.dtype = torch.bfloat16  # halves the shipped file; loading upcasts on CPU
    # Give the tokenizer one token per colour + shape (`vision_pretrain.SHAPE_TOKENS`): shape scenes can then be
    # written as words and anchored like digits (docs/results.md, E39-E40; not yet worth its cost in TINY).
    shape_tokens: bool = False

    def own_tokens(self) -> tuple[str, ...]:
        return SHAPE_TOKENS if self.shape_tokens else ()


# Reading is trained on lines of 2-8 digits (the task's lines, and every test line, hold 2-4): past the second
# digit every answer token is an "after the one I just wrote" lookup, the step the small model is slow to learn.
# Words-only probes: 76% of held-out 2-4-digit lines read after 300 steps, against 50% when trained on 2-4 (E11).
LONG_LINES = (("digits/read", {"max_digits": 8}),)

TINY = Recipe(
    name="internvl35-tiny",
    vision=VisionConfig(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768,
                        image_size=224, patch_size=14),
    text=TextConfig(vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                    rope_theta=10000.0, tie_word_embeddings=True),
    # Digits weighted up (the 90% target), reading within them; half of the digit scenes come as words, which
    # keeps the warm-up's reading skill alive while the model learns the other families from pixels. The ViT is
    # frozen: a step costs 1.35 s instead of 2.34 s with it at 0.2x (6 steps timed on the AMD VM), so 450 steps take
    # less time than 350 did, and read 82.5% of held-out lines against 77.0% (E25, docs/results.md).
    # The anchor loss holds the digit scenes' image tokens at their words' embeddings while mlp1 trains (E34-E36).
    # Reading weighs 8 within digits: with the anchor, what stage 1 teaches from words carries over to pixels, and
    # reading then rises with its share (first 1000 test lines: 87.5% at 2, 90.7% at 4, 91.0% at 8; E36-E38).
    # Charts and documents write their numbers in the digits' hand, so they are anchored and written as words like
    # digit scenes.
    mix=TaskMix(weights=(4, 1, 1.5, 1, 1, 1), thinking_ratio=0.25, symbolic_ratio=0.5,
                anchor_families=("digits", "chart", "document"), kind_weights=(("digits/read", 8.0),),
                kind_options=LONG_LINES),
    sft=dict(steps=450, examples_per_step=24, lr=1e-3, warmup_ratio=0.03, min_lr_ratio=0.05, pack_tokens=1536,
             rows_per_micro=4, save_every=100, freeze=("vit",), anchor_weight=1.0),
    vision_pretrain=VisionPretrainConfig(steps=450, batch_size=32, lr=1e-3,
                                         families=("digits", "digits", "digits", "shapes")),
    # Stage 0b puts each background or digit token at its word's embedding, not only closest to it (the anchor), at
    # the embeddings' starting norm (logit_scale 64): the language model, taught to read from words alone, then
    # reads 61% of held-out lines from pixels before it has seen one (E36; tiny17 at that point: 10%).
    align=AlignConfig(steps=150, batch_size=32, families=("digits", "digits", "digits", "shapes"), anchor_weight=1.0,
                      logit_scale=64.0),
    # The language model alone learns the digit questions on scenes written as words: many small steps (8 examples,
    # 0.2 s each) learn the reading lookup faster than fewer large ones. The word embeddings stay where stage 0b
    # put them, next to the image tokens, so that the bridge can hand the skill over to pixels (docs/results.md).
    # 3300 steps, not 2700: how fast the lookup forms depends on where stage 0b left the embeddings; after E27's
    # stage 0, 2700 steps read 94.7% of held-out lines from words and 3300 read 100% (E28). Charts and documents (an
    # eighth of the examples each) learn there, from words, which row is a day and which tile is a field (E48, E49);
    # 1000 more steps keep the digit examples about as many as before.
    warmup=(TaskMix(families=("digits", "chart", "document"), weights=(6, 1, 1), thinking_ratio=0.25,
                    symbolic_ratio=1.0, kind_weights=(("digits/read", 24.0), ("chart/read", 2.0)),
                    kind_options=LONG_LINES),
            dict(steps=4300, examples_per_step=8, lr=1.5e-3, warmup_ratio=0.03, min_lr_ratio=0.05, pack_tokens=1536,
                 rows_per_micro=4, save_every=300, freeze=("vit", "mlp", "embed"))),
    # Pixels with the language model frozen: mlp1 and the ViT learn to feed the reading circuit. From words-read 99%,
    # 100 reading steps read 81% of held-out lines from pixels (E21), where training the whole model took 150 steps
    # to reach 20% (E6). Reading 12:1, so that nearly every step hands over reading, the skill stage 1 then dilutes.
    bridge=(TaskMix(families=("digits",), thinking_ratio=0.25, kind_weights=(("digits/read", 12.0),),
                    kind_options=LONG_LINES, anchor_families=("digits",)),
            dict(steps=100, examples_per_step=24, lr=1.5e-3, warmup_ratio=0.03, min_lr_ratio=0.05, pack_tokens=1536,
                 rows_per_micro=4, save_every=50, freeze=("llm",), lr_scale={"vit": 0.2}, anchor_weight=1.0)),
)
RECIPES = {"tiny": TINY}


def build_tokenizer(recipe: Recipe) -> ChatTokenizer:
    texts = corpus(recipe.mix.families, recipe.tokenizer_samples)
    # The system prompts open every sample: frequent enough that BPE merges them into few tokens.
    texts += [DEFAULT_SYSTEM_PROMPT, THINKING_SYSTEM_PROMPT] * 1000 + ["system", "user", "assistant"] * 1000
    own = recipe.own_tokens()  # on top of vocab_size, so that they leave the BPE's merges as they were
    return train_tokenizer(texts, recipe.vocab_size + len(own), extra_special=own)


def model_config(recipe: Recipe, tokenizer: ChatTokenizer) -> InternVLConfig:
    return InternVLConfig(vision=recipe.vision, text=replace(recipe.text, vocab_size=tokenizer.vocab_size),
                          max_dynamic_patch=recipe.max_dynamic_patch, image_token_id=tokenizer.img_context_id)


def run_recipe(recipe: Recipe, out_dir: str | Path, *, steps: int | None = None, seed: int = 0,
               progress: bool = True, export: str | Path | None = None) -> Path:
    """Train (or resume) under out_dir; write the final model to `export` (default out_dir/final)."""
    started_at = time.perf_counter()
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
    sft = (recipe.mix, {**recipe.sft, **({"steps": steps} if steps else {})})
    stages = [(name, stage) for name, stage in (("warmup", recipe.warmup), ("bridge", recipe.bridge), ("sft", sft),
                                                ("focus", recipe.focus)) if stage is not None]
    started = [latest_checkpoint(_stage_dir(out, name) / "checkpoints") for name, _ in stages]
    if not any(started):  # an SFT checkpoint resumes with everything; stages 0/0b are done
        if recipe.vision_pretrain is not None:
            vision_stage(model, recipe.vision_pretrain, out, progress)
        if recipe.align is not None:
            align_stage(model, tokenizer, recipe.align, out, progress)
    meta = {"recipe": recipe.name, "seed": seed, "vision_pretrain": _read_json(out / "vision_pretrain.json"),
            "align": _read_json(out / "align.json")}
    # Each SFT stage continues the example stream of the one before, so every stage sees fresh samples.
    start = 0
    for name, (mix, fields) in stages:
        cfg = SFTConfig(out_dir=str(_stage_dir(out, name)), progress=progress, start_example=start,
                        extra={"recipe": recipe.name, "stage": name}, **fields)
        stage_started_at = time.perf_counter()
        SFTTrainer(model, TaskSource(tokenizer, config, mix, seed), cfg, pad_id=tokenizer.pad_id).run()
        meta[name] = {"mix": asdict(mix), "sft": asdict(cfg), "seconds": time.perf_counter() - stage_started_at}
        start += cfg.steps * cfg.examples_per_step
    # Wall time of this call (a resumed run counts only what it redid): the figure behind the time budget.
    meta["seconds"] = time.perf_counter() - started_at
    final = Path(export) if export else out / "final"
    export_model(model, tokenizer, final, out, recipe.export_dtype, meta)
    return final


def _stage_dir(out: Path, name: str) -> Path:
    """Where an SFT stage works: stage 1 in the run directory itself, the others in a subdirectory named after them."""
    return out if name == "sft" else out / name


def vision_stage(model: InternVLModel, cfg: VisionPretrainConfig, out: Path, progress: bool) -> None:
    """Stage 0: the ViT."""
    _once(model, out, "vision_pretrain", lambda key: key.startswith("vision_model."),
          lambda: pretrain_vision(model.vision_model, replace(cfg, progress=progress), model.config.downsample_ratio),
          cfg)


def align_stage(model: InternVLModel, tokenizer: ChatTokenizer, cfg: AlignConfig, out: Path, progress: bool) -> None:
    """Stage 0b: mlp1 and the word embeddings."""
    _once(model, out, "align", lambda key: key.startswith("mlp1.") or key.endswith("embed_tokens.weight"),
          lambda: align_projector(model, tokenizer, replace(cfg, progress=progress)), cfg)


def _once(model: InternVLModel, out: Path, name: str, trains: Callable[[str], bool], run: Callable[[], dict],
          cfg: object) -> None:
    """Run a pre-SFT stage once per run directory: the weights it trains (the keys `trains` selects) and its
    metrics are saved atomically, and a restarted run loads them instead of training again."""
    weights = out / f"{name}.safetensors"
    keys = {k for k in model.state_dict() if trains(k)}
    if weights.exists():
        saved = load_file(str(weights))
        if set(saved) != keys:
            raise ValueError(f"{weights} does not hold this stage's weights: missing {sorted(keys - set(saved))}, "
                             f"unexpected {sorted(set(saved) - keys)}")
        model.load_state_dict(saved, strict=False)
        return
    metrics = run()
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k in keys}, str(tmp))
    atomic_write_text(out / f"{name}.json", json.dumps({"config": asdict(cfg), **metrics}, indent=1))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def export_model(model: InternVLModel, tokenizer: ChatTokenizer, final: Path, run_dir: Path,
                 dtype: torch.dtype | None, meta: dict) -> None:
    """A self-contained model directory: weights, config, tokenizer, how it was trained, its loss curve."""
    save_checkpoint(model, final, dtype=dtype)
    tokenizer.save(final)
    atomic_write_text(final / "training.json", json.dumps(meta, indent=1, default=str))
    if (run_dir / "loss.png").exists():
        shutil.copy(run_dir / "loss.png", final / "loss.png")
