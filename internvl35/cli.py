"""`internvl35` command line: each subcommand is a typed function; argparse only maps flags onto it.

    internvl35 chat --image photo.png "What is in the picture?"      # one-shot (bundled model by default)
    internvl35 chat                                                  # interactive REPL
    internvl35 generate in.jsonl out.jsonl --model DIR
    internvl35 convert SRC DST --layout hf
    internvl35 info [--model DIR | --preset InternVL3.5-8B]
    internvl35 train recipe tiny --out runs/tiny
    internvl35 train sft --data my.jsonl --out runs/mine [--freeze vit --freeze llm]
    internvl35 eval --model DIR --n 100 --out docs/results

User errors print one line (`error: ...`) and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from internvl35.cli_checks import at_least_one, check_destination, check_generate_row, device, positive_size, seed
from internvl35.data.jsonl import read_jsonl
from internvl35.data.tokenizer import check_utf8
from internvl35.engine.engine import Request, RequestOutput
from internvl35.engine.sampling import SamplingParams
from internvl35.train.sft import PARTS

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, PermissionError, IsADirectoryError)


def _params(args: argparse.Namespace, thinking: bool = False) -> SamplingParams:
    temperature = args.temperature if args.temperature is not None else (0.6 if thinking else 0.0)
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=temperature, top_k=args.top_k,
                          top_p=args.top_p, stop=tuple(args.stop or ()), seed=args.seed)


def _load(model: str | None, device: str, dtype: str):
    from internvl35.api import InternVL

    return InternVL.from_pretrained(model, device=device, dtype=dtype)


# ---- subcommands -----------------------------------------------------------------------------------------


def chat(question: str | None, images: Sequence[str], video: str | None, thinking: bool, params: SamplingParams,
         model: str | None = None, device: str = "cpu", dtype: str = "auto", num_frames: int = 8) -> None:
    """One-shot answer (streamed) when a question is given, else an interactive REPL with history."""
    if question is not None:
        check_utf8(question, "the question")
    vl = _load(model, device, dtype)
    kw = {"video": video, "num_frames": num_frames} if video else {}
    if question is not None:
        for piece in vl.stream_chat(question, images, params=params, thinking=thinking, **kw):
            print(piece, end="", flush=True)
        print()
        return
    _repl(vl, images, thinking, params)


def _repl(vl, images: Sequence[str], thinking: bool, params: SamplingParams) -> None:
    pending = [_checked_image(path) for path in images]
    print("internvl35 chat: type a question; /image PATH adds an image, /reset clears, /quit exits.")
    if isinstance(sys.stdin, io.TextIOWrapper):
        # Decoded strictly, one bad byte fails the whole buffered chunk (the piped lines after it too);
        # with surrogateescape it arrives as one line that _check_text reports.
        sys.stdin.reconfigure(errors="surrogateescape")
    history: list[tuple[str, str]] = []
    shown: list[str] = []
    while True:
        try:
            line = input(">>> ").strip()
        except EOFError:
            print()
            return
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history, pending, shown = [], [], []
            continue
        if not line:
            continue
        try:
            if line.startswith("/image "):
                if history:
                    raise ValueError("images can only be added before the first question; /reset to start over")
                pending.append(_checked_image(line.split(" ", 1)[1].strip()))
                continue
            check_utf8(line, "the line")
            # Images belong to the first turn, as in InternVL's multi-turn chat; they join the session only
            # once that turn succeeds, so a failed turn leaves nothing behind that fails the next one.
            turn_images = pending or shown
            answer = "".join(_echo(vl.stream_chat(line, turn_images, params=params, thinking=thinking, history=history)))
            print()
            history.append((line if history else _with_placeholders(line, len(turn_images)), answer))
            shown, pending = turn_images, []
        except USER_ERRORS as e:
            print(f"error: {e}")


def _checked_image(path: str) -> str:
    """Load the image once when it is given, so a bad path is reported then and never kept in the session."""
    from internvl35.data.image import load_image

    load_image(path)
    return path


def _with_placeholders(question: str, n: int) -> str:
    from internvl35.data.chat import add_image_placeholders

    return add_image_placeholders(question, num_images=n)


def _echo(pieces):
    for piece in pieces:
        print(piece, end="", flush=True)
        yield piece


def generate(inp: str, out: str, params: SamplingParams, model: str | None = None, device: str = "cpu",
             dtype: str = "auto") -> None:
    """JSONL in ({"question", "images"?, "thinking"?} or {"input_ids"}) -> JSONL out, one line per input.

    The output path and every row are checked before the model loads; on Ctrl-C the rows finished so far
    are kept in OUT.partial (OUT itself is written only when all rows finished).
    """
    from internvl35.atomic import atomic_write_text

    check_destination(out, "file")
    rows = read_jsonl(inp, check_generate_row)
    vl = _load(model, device, dtype)
    ids = [_add_row(vl, inp, n, row, params) for n, row in rows]
    done: dict[int, RequestOutput] = {}
    try:
        vl.engine.wait(ids, progress=True, done=done)
    except KeyboardInterrupt:
        kept = [(row, done[i]) for (_, row), i in zip(rows, ids) if i in done]
        atomic_write_text(f"{out}.partial", _output_lines(vl, kept))
        raise KeyboardInterrupt(f"kept the {len(kept)} of {len(rows)} rows that had finished in {out}.partial") from None
    atomic_write_text(out, _output_lines(vl, [(row, done[i]) for (_, row), i in zip(rows, ids)]))
    Path(f"{out}.partial").unlink(missing_ok=True)  # an earlier interrupted run's rows: superseded by OUT


def _add_row(vl, path: str, n: int, row: dict, params: SamplingParams) -> int:
    """Prepare line n's request and queue it; an error (image, prompt length) names the line."""
    try:
        if "input_ids" in row:
            return vl.engine.add_request(Request(row["input_ids"], params))
        inputs = vl.prepare(row["question"], row.get("images", []), thinking=row.get("thinking", False))
        return vl.engine.add_request(Request(inputs.input_ids, params, pixel_values=inputs.pixel_values))
    except USER_ERRORS as e:
        raise ValueError(f"{path}: line {n}: {e}") from e


def _output_lines(vl, results: list[tuple[dict, RequestOutput]]) -> str:
    return "".join(json.dumps({**row, "output": vl.output_text(o), "output_ids": o.token_ids,
                               "finish_reason": o.finish_reason}) + "\n" for row, o in results)


def convert(src: str, dst: str, layout: str, max_shard_gb: float = 5.0) -> None:
    """Rewrite a checkpoint in the other key layout ('original' or 'hf')."""
    from internvl35.checkpoint import convert_checkpoint

    check_destination(dst, "directory")
    convert_checkpoint(src, dst, layout, int(max_shard_gb * 2**30))
    print(f"wrote {layout} layout to {dst}")


def info(model: str | None = None, preset_name: str | None = None) -> None:
    """Config summary, parameter counts per part and tokens per tile."""
    import torch

    from internvl35.config import InternVLConfig
    from internvl35.model.internvl import InternVLModel
    from internvl35.presets import preset

    if preset_name:
        config = preset(preset_name)
    else:
        from internvl35.api import BUNDLED

        config = InternVLConfig.load(model or BUNDLED)
    with torch.device("meta"):
        m = InternVLModel(config)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    v, t = config.vision, config.text
    print(f"vision   InternViT {v.num_hidden_layers} layers x {v.hidden_size}, {v.norm_type}, qk_norm={v.qk_normalization}, "
          f"tile {v.image_size}px / patch {v.patch_size}: {count(m.vision_model) / 1e6:,.1f}M params")
    print(f"mlp1     pixel shuffle {config.downsample_ratio} -> {count(m.mlp1) / 1e6:,.1f}M params")
    kind = f"MoE {t.num_experts} experts top-{t.num_experts_per_tok}" if t.is_moe else "dense"
    print(f"llm      Qwen3 {kind}, {t.num_hidden_layers} layers x {t.hidden_size}, vocab {t.vocab_size}: "
          f"{count(m.language_model) / 1e6:,.1f}M params")
    print(f"total    {count(m) / 1e6:,.1f}M params; {config.tokens_per_tile} tokens per tile; "
          f"up to {config.max_dynamic_patch} tiles (+ thumbnail) per image")


def train_recipe(name: str, out: str, steps: int | None = None, export: str | None = None) -> None:
    """Train a named model from scratch (resumes if `out` holds a checkpoint)."""
    from internvl35.train.recipe import RECIPES, run_recipe

    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    final = run_recipe(RECIPES[name], out, steps=steps, export=export)
    minutes = json.loads((final / "training.json").read_text())["seconds"] / 60
    print(f"model written to {final} ({minutes:.1f} min)")


def _part_scale(text: str) -> tuple[str, float]:
    """argparse type for `--lr-scale vit=0.1`."""
    part, _, value = text.partition("=")
    try:
        scale = float(value)
    except ValueError:
        scale = None
    if part not in PARTS or scale is None or scale < 0:
        raise argparse.ArgumentTypeError(f"expected PART=SCALE with PART one of {', '.join(PARTS)}; got {text!r}")
    return part, scale


def train_sft(model: str | None, out: str, data: str | None, families: Sequence[str] | None, steps: int,
              freeze: Sequence[str], export: str | None, **sft: object) -> None:
    """Fine-tune a model on a JSONL file of your own ({question, answer, images?}) or on task families.

    `--freeze vit --freeze llm --lr 1e-3` is the MLP warm-up stage; resumes if OUT holds a checkpoint.
    """
    from dataclasses import asdict

    from internvl35.api import InternVL
    from internvl35.train.data import JsonlSource, TaskMix, TaskSource
    from internvl35.train.recipe import export_model
    from internvl35.train.sft import SFTConfig, SFTTrainer

    vl = InternVL.from_pretrained(model, dtype="float32")
    source = (JsonlSource(data, vl.tokenizer, vl.config) if data
              else TaskSource(vl.tokenizer, vl.config, TaskMix(**({"families": tuple(families)} if families else {}))))
    cfg = SFTConfig(out_dir=out, steps=steps, freeze=tuple(freeze), **sft)
    SFTTrainer(vl.model, source, cfg, pad_id=vl.tokenizer.pad_id).run()
    final = Path(export) if export else Path(out) / "final"
    export_model(vl.model, vl.tokenizer, final, Path(out), None,
                 {"base": model or "internvl35-tiny", "data": data or "task mix", "sft": asdict(cfg)})
    print(f"model written to {final}")


def evaluate(model: str | None, n: int, families: Sequence[str] | None, thinking: bool, out: str | None,
             device: str = "cpu", dtype: str = "auto") -> None:
    """Per-family accuracy on held-out task samples; prints markdown, writes .md and .json when --out is given."""
    from internvl35.eval.harness import evaluate as run

    vl = _load(model, device, dtype)
    report = run(vl, families, n, thinking=thinking, model_name=model or "internvl35-tiny (bundled)", progress=True)
    print(report.to_markdown())
    if out:
        from internvl35.atomic import atomic_write_text

        atomic_write_text(f"{out}.md", report.to_markdown())
        atomic_write_text(f"{out}.json", report.to_json())


# ---- argument parsing ------------------------------------------------------------------------------------

def _sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (default; 0.6 with --thinking)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=seed, default=None, help="0 .. 2**63-1: reproducible sampling")


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint directory or tiny preset (default: bundled internvl35-tiny)")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, else fp32), float32, bfloat16, float16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="internvl35", description="InternVL3.5: chat, generate, convert, train, eval")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="ask about images (one-shot) or start a REPL")
    p.add_argument("question", nargs="?")
    p.add_argument("--image", action="append", default=[], help="image path (repeatable)")
    p.add_argument("--video", default=None, help="animated GIF/WebP or a directory of frames")
    p.add_argument("--num-frames", type=at_least_one, default=8)
    p.add_argument("--thinking", action="store_true", help="thinking mode (reasoning in <think>...</think>)")
    _model_flags(p)
    _sampling_flags(p)
    p.set_defaults(run=lambda a: chat(a.question, a.image, a.video, a.thinking, _params(a, a.thinking), a.model,
                                      a.device, a.dtype, a.num_frames))

    p = sub.add_parser("generate", help="JSONL in -> JSONL out")
    p.add_argument("input")
    p.add_argument("output")
    _model_flags(p)
    _sampling_flags(p)
    p.set_defaults(run=lambda a: generate(a.input, a.output, _params(a), a.model, a.device, a.dtype))

    p = sub.add_parser("convert", help="convert a checkpoint between the original and HF layouts")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--layout", choices=["original", "hf"], required=True)
    p.add_argument("--max-shard-gb", type=positive_size, default=5.0)
    p.set_defaults(run=lambda a: convert(a.src, a.dst, a.layout, a.max_shard_gb))

    p = sub.add_parser("info", help="config, parameter counts, tokens per tile")
    p.add_argument("--model", default=None)
    p.add_argument("--preset", default=None)
    p.set_defaults(run=lambda a: info(a.model, a.preset))

    p = sub.add_parser("train", help="training")
    tsub = p.add_subparsers(dest="train_command", required=True)
    r = tsub.add_parser("recipe", help="train a named model from scratch, e.g. tiny")
    r.add_argument("name")
    r.add_argument("--out", default="runs/tiny")
    r.add_argument("--steps", type=int, default=None)
    r.add_argument("--export", default=None, help="where to write the final model (default OUT/final)")
    r.set_defaults(run=lambda a: train_recipe(a.name, a.out, a.steps, a.export))

    r = tsub.add_parser("sft", help="fine-tune on a JSONL file or on the task families")
    r.add_argument("--model", default=None, help="checkpoint directory or tiny preset (default: bundled internvl35-tiny)")
    r.add_argument("--data", default=None, help='JSONL of {"question", "answer", "images"?: [...], "thinking"?}')
    r.add_argument("--family", action="append", default=None, help="task family (repeatable) when no --data")
    r.add_argument("--out", default="runs/sft")
    r.add_argument("--export", default=None)
    r.add_argument("--steps", type=int, default=100)
    r.add_argument("--examples-per-step", type=int, default=16)
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--warmup-ratio", type=float, default=0.03)
    r.add_argument("--weight-decay", type=float, default=0.05)
    r.add_argument("--averaging", choices=["square", "token", "sample"], default="square")
    r.add_argument("--freeze", action="append", default=[], choices=list(PARTS),
                   help="a part to keep fixed (repeatable); embed = the word embeddings (and a tied output head)")
    r.add_argument("--lr-scale", action="append", default=[], type=_part_scale, metavar="PART=SCALE",
                   help=f"learning-rate multiplier for one of {', '.join(PARTS)} (repeatable), e.g. vit=0.1")
    r.add_argument("--no-packing", action="store_true")
    r.add_argument("--pack-tokens", type=int, default=2048)
    r.add_argument("--save-every", type=int, default=50)
    r.set_defaults(run=lambda a: train_sft(
        a.model, a.out, a.data, a.family, a.steps, a.freeze, a.export, examples_per_step=a.examples_per_step,
        lr=a.lr, warmup_ratio=a.warmup_ratio, weight_decay=a.weight_decay, averaging=a.averaging,
        packing=not a.no_packing, pack_tokens=a.pack_tokens, save_every=a.save_every, lr_scale=dict(a.lr_scale)))

    p = sub.add_parser("eval", help="held-out accuracy per task family")
    _model_flags(p)
    p.add_argument("--n", type=int, default=100, help="test samples per family")
    p.add_argument("--family", action="append", default=None)
    p.add_argument("--thinking", action="store_true")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    p.set_defaults(run=lambda a: evaluate(a.model, a.n, a.family, a.thinking, a.out, a.device, a.dtype))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
