"""Training checkpoints: model weights + optimizer + RNG + progress, written atomically, safetensors + JSON only.

Layout of one checkpoint (a directory, renamed into place only when complete):
    step-000120/
        config.json, model.safetensors      # a normal model checkpoint (loadable by load_model)
        optimizer.safetensors               # every optimizer state tensor, keyed "{param_index}.{name}"
        trainer.json                        # step, examples seen, param groups, metrics so far
        rng.safetensors                     # torch CPU RNG state
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from internvl35.checkpoint import check_state, read_checkpoint, save_checkpoint
from internvl35.model.internvl import InternVLModel


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_train_state(directory: Path, model: InternVLModel, opt: torch.optim.Optimizer, progress: dict[str, Any],
                     keep: int = 2) -> Path:
    """Write checkpoint `step-{N}` under `directory` atomically and keep only the newest `keep`."""
    final = directory / f"step-{progress['step']:06d}"
    tmp = directory / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_checkpoint(model, tmp)
    tensors, meta = _optimizer_tensors(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({"cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps({**progress, "optimizer": meta}, indent=1))
    with open(tmp / "trainer.json") as f:
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    done = sorted(p for p in directory.glob("step-*") if (p / "trainer.json").exists())
    return done[-1] if done else None


def load_train_state(path: Path, model: InternVLModel, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Load weights into `model` (same config), the optimizer and the RNG; return the saved progress."""
    _, state = read_checkpoint(path)
    # Copy into the existing parameters so the optimizer keeps referring to them.
    model.load_state_dict(check_state(model, state), strict=True)
    progress = json.loads((path / "trainer.json").read_text())
    _restore_optimizer(opt, load_file(str(path / "optimizer.safetensors")), progress.pop("optimizer"))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["cpu"])
    return progress
