"""Checkpoint I/O: safetensors only (single file or sharded), both key layouts, strict loading, atomic writes.

A checkpoint directory holds `config.json` and `model.safetensors` or `model.safetensors.index.json` +
shards. Pickle formats (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from internvl35.atomic import atomic_path, atomic_write_text
from internvl35.config import InternVLConfig
from internvl35.config_io import detect_layout
from internvl35.model.internvl import InternVLModel, init_weights
from internvl35.model.keymap import fuse_experts, hf_to_original, original_to_hf, split_experts

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, in a refused format, or does not match the model."""


# ---- reading ----------------------------------------------------------------------------------------------


def _refuse_pickle(directory: Path) -> None:
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise CheckpointError(
        f"{directory} has no safetensors weights" + (f" (found pickle files: {', '.join(pickles)})" if pickles else "")
        + ". internvl35 never unpickles weights because that can run arbitrary code. Convert them once, in an "
        "environment you trust: `model = AutoModel.from_pretrained(dir, trust_remote_code=True); "
        "model.save_pretrained(out_dir, safe_serialization=True)`, then load out_dir.")


def weight_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        if directory.suffix in PICKLE_SUFFIXES:
            _refuse_pickle(directory.parent)
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    index = directory / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e!r}") from e
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names")
        shards = sorted(set(weight_map.values()))
        # Shards are files of this directory: an index must not make the loader read files elsewhere.
        outside = [s for s in shards if Path(s).name != s or s in (".", "..")]
        if outside:
            raise CheckpointError(f"{index} names shard(s) outside the checkpoint directory: {', '.join(outside)}")
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) that do not exist: {', '.join(missing)}")
        return [directory / s for s in shards]
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    others = sorted(directory.glob("*.safetensors"))
    if others:
        return others
    _refuse_pickle(directory)
    raise AssertionError("unreachable")


def read_safetensors(files: list[Path], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    state[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file} is not a readable safetensors file: {e}") from e
    return state


def read_checkpoint(directory: str | Path, dtype: torch.dtype | None = None) -> tuple[InternVLConfig, dict[str, Tensor]]:
    """config + state dict in the original layout, whatever layout is on disk."""
    directory = Path(directory)
    files = weight_files(directory)
    config = InternVLConfig.load(directory)
    state = read_safetensors(files, dtype)
    if detect_layout(json.loads((directory / "config.json").read_text())) == "hf":
        state = hf_to_original(state)
    try:
        return config, fuse_experts(state)
    except KeyError as e:
        raise CheckpointError(f"{directory}: {e.args[0]}") from None


def check_state(model: torch.nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strict comparison of names and shapes; drops a redundant tied lm_head. Raises naming every problem."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if "language_model.lm_head.weight" not in expected and "language_model.lm_head.weight" in state:
        state = {k: v for k, v in state.items() if k != "language_model.lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
                       for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or misshaped:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
        raise CheckpointError("checkpoint does not match the model config; " + "; ".join(parts))
    return state


def build_model(config: InternVLConfig, state: dict[str, Tensor] | None = None, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> InternVLModel:
    """Build on the meta device and load strictly; without a state dict, initialise randomly."""
    if state is None:
        with torch.device(device):
            model = InternVLModel(config)
        init_weights(model)
        return model.to(dtype).eval()
    with torch.device("meta"):
        model = InternVLModel(config)
    state = check_state(model, state)
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_model(directory: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               image_token_id: int | None = None) -> InternVLModel:
    config, state = read_checkpoint(directory, dtype)
    if config.image_token_id is None and image_token_id is not None:
        config = config.replace(image_token_id=image_token_id)
    return build_model(config, state, dtype, device)


# ---- writing ----------------------------------------------------------------------------------------------


def _shards(state: dict[str, Tensor], max_shard_bytes: int) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def save_checkpoint(model: InternVLModel, directory: str | Path, layout: str = "original",
                    max_shard_bytes: int = 5 * 2**30, dtype: torch.dtype | None = None) -> None:
    """Write config.json + safetensors (sharded past `max_shard_bytes`); each file replaced atomically,
    the index and config last, so a reader never sees a half-written checkpoint."""
    directory = Path(directory)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    state = split_experts(state)
    if layout == "hf":
        state = original_to_hf(state)
    elif layout != "original":
        raise CheckpointError(f"unknown checkpoint layout {layout!r}; expected 'original' or 'hf'")
    shards = _shards(state, max_shard_bytes)
    meta = {"format": "pt"}
    if len(shards) == 1:
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(shards[0], str(tmp), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            with atomic_path(directory / name) as tmp:
                save_file(shard, str(tmp), metadata=meta)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        atomic_write_text(directory / INDEX_NAME, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    _remove_stale_weights(directory, {"model.safetensors"} if len(shards) == 1 else {INDEX_NAME, *weight_map.values()})
    model.config.save(directory, layout)


def _remove_stale_weights(directory: Path, written: set[str]) -> None:
    """Delete the weight files of a checkpoint written here before that this one does not use: an old index would
    win over a new single file (`weight_files`), and old shards would linger. The index goes first, so that a
    reader meanwhile sees either the old index with its shards or the new files."""
    weights = (directory / INDEX_NAME, directory / "model.safetensors", *directory.glob("model-*-of-*.safetensors"))
    stale = [p for p in weights if p.name not in written and p.exists()]
    for path in sorted(stale, key=lambda p: p.name != INDEX_NAME):
        path.unlink()


def convert_checkpoint(src: str | Path, dst: str | Path, layout: str, max_shard_bytes: int = 5 * 2**30) -> None:
    """Rewrite a checkpoint in the other key layout (weights bit-identical, dtype kept)."""
    config, state = read_checkpoint(src)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    model = build_model(config, state, dtype=dtypes.pop() if len(dtypes) == 1 else torch.float32)
    save_checkpoint(model, dst, layout, max_shard_bytes)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                 "added_tokens.json", "generation_config.json"):
        if (Path(src) / name).exists() and Path(src).resolve() != Path(dst).resolve():
            with atomic_path(Path(dst) / name) as tmp:
                tmp.write_bytes((Path(src) / name).read_bytes())
