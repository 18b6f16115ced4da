"""Weight names: original (remote-code) layout <-> HF layout, as data.

Our parameters carry the original layout's names, so only the HF layout needs mapping. `{}` stands for a
layer index. The fused vision `attn.qkv` is the only tensor that changes shape: it is split into
q/k/v (three equal parts along dim 0) in the HF layout. Apart from both layouts, a MoE layer's experts are
stacked in the model and one Linear each in every checkpoint (`fuse_experts`, `split_experts`).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

VIT, HF_VIT = "vision_model.encoder.layers.{}.", "model.vision_tower.encoder.layer.{}."

# original name -> HF name (hub `-HF` spelling)
RENAMES: dict[str, str] = {
    "vision_model.embeddings.class_embedding": "model.vision_tower.embeddings.cls_token",
    "vision_model.embeddings.position_embedding": "model.vision_tower.embeddings.position_embeddings",
    "vision_model.embeddings.patch_embedding.weight": "model.vision_tower.embeddings.patch_embeddings.projection.weight",
    "vision_model.embeddings.patch_embedding.bias": "model.vision_tower.embeddings.patch_embeddings.projection.bias",
    VIT + "attn.proj.weight": HF_VIT + "attention.projection_layer.weight",
    VIT + "attn.proj.bias": HF_VIT + "attention.projection_layer.bias",
    VIT + "attn.q_norm.weight": HF_VIT + "attention.q_norm.weight",
    VIT + "attn.k_norm.weight": HF_VIT + "attention.k_norm.weight",
    VIT + "mlp.fc1.weight": HF_VIT + "mlp.fc1.weight",
    VIT + "mlp.fc1.bias": HF_VIT + "mlp.fc1.bias",
    VIT + "mlp.fc2.weight": HF_VIT + "mlp.fc2.weight",
    VIT + "mlp.fc2.bias": HF_VIT + "mlp.fc2.bias",
    VIT + "norm1.weight": HF_VIT + "layernorm_before.weight",
    VIT + "norm1.bias": HF_VIT + "layernorm_before.bias",
    VIT + "norm2.weight": HF_VIT + "layernorm_after.weight",
    VIT + "norm2.bias": HF_VIT + "layernorm_after.bias",
    VIT + "ls1": HF_VIT + "lambda_1",
    VIT + "ls2": HF_VIT + "lambda_2",
    "mlp1.0.weight": "model.multi_modal_projector.layer_norm.weight",
    "mlp1.0.bias": "model.multi_modal_projector.layer_norm.bias",
    "mlp1.1.weight": "model.multi_modal_projector.linear_1.weight",
    "mlp1.1.bias": "model.multi_modal_projector.linear_1.bias",
    "mlp1.3.weight": "model.multi_modal_projector.linear_2.weight",
    "mlp1.3.bias": "model.multi_modal_projector.linear_2.bias",
    "language_model.lm_head.weight": "lm_head.weight",
}
# original fused name -> HF (q, k, v) names
SPLITS: dict[str, tuple[str, str, str]] = {
    VIT + f"attn.qkv.{w}": tuple(HF_VIT + f"attention.{p}_proj.{w}" for p in "qkv") for w in ("weight", "bias")
}
# Prefix renames applied after the exact names above (the whole language model keeps its inner names).
PREFIXES = [("language_model.model.", "model.language_model.")]
# transformers 5.x `save_pretrained` writes the older LLaVA-style spelling of the HF layout.
HF_SPELLINGS = [
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
]


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


_FWD = [(_pattern(o), h) for o, h in RENAMES.items()]
_BWD = [(_pattern(h), o) for o, h in RENAMES.items()]
_SPLIT_FWD = [(_pattern(o), hs) for o, hs in SPLITS.items()]
_SPLIT_BWD = [(tuple(_pattern(h) for h in hs), o) for o, hs in SPLITS.items()]


def _rename(name: str, table: list[tuple[re.Pattern[str], str]], prefixes: list[tuple[str, str]]) -> str:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.replace("{}", m.group(1)) if m.groups() else target
    for old, new in prefixes:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def normalize_hf_spelling(name: str) -> str:
    """Bring either HF spelling to the hub `-HF` spelling (`model.vision_tower.*`, `lm_head.*`)."""
    if name.startswith(("model.", "lm_head.")):
        return name
    for old, new in HF_SPELLINGS:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def original_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        for pattern, targets in _SPLIT_FWD:
            m = pattern.match(name)
            if m:
                for target, part in zip(targets, t.chunk(3, dim=0)):
                    out[target.replace("{}", m.group(1))] = part.contiguous()
                break
        else:
            out[_rename(name, _FWD, PREFIXES)] = t
    return out


def hf_to_original(state: dict[str, Tensor]) -> dict[str, Tensor]:
    state = {normalize_hf_spelling(k): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    pending: dict[str, dict[int, Tensor]] = {}
    for name, t in state.items():
        for patterns, target in _SPLIT_BWD:
            hit = next(((i, m) for i, p in enumerate(patterns) if (m := p.match(name))), None)
            if hit:
                i, m = hit
                pending.setdefault(target.replace("{}", m.group(1)), {})[i] = t
                break
        else:
            out[_rename(name, _BWD, [(n, o) for o, n in PREFIXES])] = t
    for target, parts in pending.items():
        if len(parts) != 3:
            missing = [("q", "k", "v")[i] for i in range(3) if i not in parts]
            raise KeyError(f"{target}: the HF checkpoint lacks the {'/'.join(missing)} part(s) of the split projection")
        out[target] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


# ---- MoE experts: one Linear per expert on disk (both layouts), stacked in the model (`qwen3.Experts`) ----------

_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def fuse_experts(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`{p}.{e}.gate_proj.weight`, `.up_proj.`, `.down_proj.` for e = 0..E-1 -> `{p}.gate_up_proj` (E, 2I, D) and
    `{p}.down_proj` (E, D, I), where p is a layer's `...mlp.experts`. Other names pass through. Empties `state` as
    it goes, so that a layer's per-expert tensors can be freed once stacked."""
    layers: dict[str, dict[tuple[int, str], Tensor]] = {}
    out: dict[str, Tensor] = {}
    for name in list(state):
        m = _EXPERT.match(name)
        if m:
            layers.setdefault(m.group(1), {})[int(m.group(2)), m.group(3)] = state.pop(name)
        else:
            out[name] = state.pop(name)
    for prefix, parts in layers.items():
        n = 1 + max(e for e, _ in parts)
        missing = [f"{prefix}.{e}.{p}.weight" for e in range(n) for p in _PROJECTIONS if (e, p) not in parts]
        if missing:
            raise KeyError(f"the checkpoint lacks {len(missing)} expert weight(s): {', '.join(missing[:5])}")
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([parts.pop((e, "gate_proj")), parts.pop((e, "up_proj"))])
                                                     for e in range(n)])
        out[f"{prefix}.down_proj"] = torch.stack([parts.pop((e, "down_proj")) for e in range(n)])
    return out


def split_experts(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `fuse_experts`: stacked experts back to one gate/up/down Linear weight each (views)."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        prefix, _, leaf = name.rpartition(".")
        if prefix.endswith(".mlp.experts") and leaf == "gate_up_proj":
            for e, w in enumerate(t):
                out[f"{prefix}.{e}.gate_proj.weight"], out[f"{prefix}.{e}.up_proj.weight"] = w.chunk(2)
        elif prefix.endswith(".mlp.experts") and leaf == "down_proj":
            for e, w in enumerate(t):
                out[f"{prefix}.{e}.down_proj.weight"] = w
        else:
            out[name] = t
    return out
