"""Linear layers that run on CPU through weights pre-packed for oneDNN, where that is faster.

`F.linear` in fp32 on CPU goes to MKL's GEMM. Which of the two is faster depends on the CPU and the shape:
- on an AMD EPYC VM with AVX-512, oneDNN over a weight reordered once into its blocked layout was
  2.2-2.3x faster on prefill and training shapes and 3-5x faster at the 1-8 rows of a decode step;
- on an Intel Xeon VM (AVX-512, AMX), MKL was faster at 1 row for every decoder matrix (a 512x512 layer:
  11 against 22 us) and oneDNN faster at 8 rows for the wide ones and at 300 rows (docs/benchmarks.md).
So calls of more than `_TIMED_ROWS` rows (prefill, the ViT, training) take the packed weights and smaller ones
`F.linear`. With INTERNVL35_PACKED_LINEAR=trial, each smaller inference call shape (weight shape x rows rounded up
to a power of two) is instead tried both ways on its first real calls in a process and keeps the faster
(`_run_faster`): faster where oneDNN wins small calls (the AMD VM), but the two kernels round differently, so
the trial's first calls and the later ones, or two processes that timed differently, can sample different
tokens from the same seed. The default keeps a fixed choice, so that a seeded run repeats exactly. Training uses packed weights for the
forward and the input's gradient (`_TrainingLinear`). Inference in bf16 is packed too where oneDNN runs bf16
natively. GPUs, other dtypes, bf16 training, autocast and sharded weights keep plain `F.linear`.

The packed copies are derived state, never saved. They are rebuilt whenever the weight may have changed:
after any optimizer step (fused AdamW updates weights without bumping their version counters, so a global
optimizer hook counts steps), an in-place update under no_grad (the version counter: load_state_dict,
RL weight syncs), a reassigned or moved tensor (a different storage). Writes through `p.data` bypass all
of these and are not seen. The copies cost up to two extra copies of the weights in memory on CPU.
INTERNVL35_PACKED_LINEAR=0 turns them off, =1 uses them for every call, =auto (the default) for the calls of more
than `_TIMED_ROWS` rows, =trial as above.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.optim.optimizer import register_optimizer_step_post_hook

log = logging.getLogger(__name__)

# oneDNN picks its blocked layout for an expected row count; 16 was as fast as the ideal hint from
# 1 row (decode) to 300+ rows (prefill) in our measurements.
_ROWS_HINT = 16


# Calls of more rows than this always take the packed weights: they were faster at prefill, ViT and training
# shapes on every CPU measured, and timing them would cost a prefill.
_TIMED_ROWS = 64


def _mode() -> str:
    """INTERNVL35_PACKED_LINEAR: "0" (never packed), "1" (always), "auto" (the default: by rows) or "trial" (small
    calls by timing).

    Read at import, so another value warns and means auto instead of failing every import of the package."""
    value = os.environ.get("INTERNVL35_PACKED_LINEAR", "auto").strip().lower()
    if value not in ("0", "1", "auto", "trial"):
        warnings.warn(f"INTERNVL35_PACKED_LINEAR={value!r} is not 0, 1, auto or trial; using auto", stacklevel=2)
        return "auto"
    return value


def _available(mode: str | None = None) -> bool:
    return ((mode or _mode()) != "0" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


_MODE = _mode()
_AVAILABLE = _available(_MODE)
_ALWAYS_PACKED = _MODE == "1"
_TIMED = _MODE == "trial"  # small calls by timing; otherwise plain F.linear (reproducible: see the docstring)


def _packed_dtypes() -> tuple[torch.dtype, ...]:
    """fp32, and bf16 where oneDNN runs it natively (AVX512-BF16 or AMX): on an Intel Xeon with AMX the decoder's
    matrices and head took 2.6 ms packed against 4.1 ms through F.linear at 1 row. Training stays fp32 (`linear`)."""
    native_bf16 = hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported") and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (torch.float32, torch.bfloat16) if _AVAILABLE and native_bf16 else (torch.float32,)


_PACKED_DTYPES = _packed_dtypes()


def _reorder(weight: Tensor) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT)


def _disable(dtype: torch.dtype, why: str) -> None:
    """Stop packing weights of this dtype (another dtype's packing, e.g. fp32's beside a refused bf16, stays on)."""
    global _PACKED_DTYPES
    _PACKED_DTYPES = tuple(d for d in _PACKED_DTYPES if d != dtype)
    log.warning("packed CPU linears turned off for %s: %s", dtype, why)


_optimizer_steps = 0  # optimizer steps taken in this process, by any optimizer


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def _packable(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Plain (not sharded, not meta) CPU tensors of one packed dtype, outside autocast, with packing available.

    Written as plain attribute checks: a decode step makes 30+ linear calls, and this runs for each."""
    dtype = x.dtype
    if not _AVAILABLE or dtype not in _PACKED_DTYPES or weight.dtype != dtype or not (x.is_cpu and weight.is_cpu):
        return False
    if bias is not None and (not bias.is_cpu or bias.dtype != dtype):
        return False
    if type(weight) not in (Tensor, nn.Parameter) or weight.layout != torch.strided:
        return False
    return not torch.is_autocast_enabled("cpu")


def _needs_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


def _version(weight: Tensor) -> int | None:
    """The in-place version counter, or None for inference tensors, which have none (never packed)."""
    try:
        return weight._version
    except RuntimeError:
        return None


def weights_version(weights: Iterable[Tensor]) -> tuple | None:
    """What identifies the current values of these weights: the optimizer steps taken in this process, and each
    weight's storage, in-place version and shape. None when one is an inference tensor (it has no version).
    Writes through `p.data` are not seen (see the module docstring)."""
    key: list = [_optimizer_steps]
    for w in weights:
        version = _version(w)
        if version is None:
            return None
        key += (w.data_ptr(), version, w.shape)
    return tuple(key)


class PackedWeight:
    """The oneDNN-packed copy of one weight (or of several stacked along the output dimension, or of one
    transposed), rebuilt when any of them changes.

    "Changes" is: an optimizer step anywhere, another tensor object (the weak reference catches a
    reassigned parameter even when the allocator reuses the old address), another storage
    (`p.data = ...`, `.to()`), or another version.
    """

    def __init__(self, transpose: bool = False) -> None:
        self.transpose = transpose
        self._packed: Tensor | None = None
        self._sources: tuple[weakref.ref, ...] = ()
        self._key: tuple | None = None

    def get(self, *weights: Tensor) -> Tensor | None:
        key = weights_version(weights)
        if key is None:
            return None
        if key != self._key or not self._same_objects(weights):
            with torch.no_grad():
                stacked = weights[0] if len(weights) == 1 else torch.cat(weights)
                stacked = stacked.detach().t().contiguous() if self.transpose else stacked.detach()
                try:
                    self._packed = _reorder(stacked)
                except RuntimeError as e:  # a build or CPU whose oneDNN cannot pack this dtype: F.linear from now on
                    _disable(stacked.dtype, f"oneDNN could not pack a {tuple(stacked.shape)} weight ({e})")
                    return None
            self._sources, self._key = tuple(weakref.ref(w) for w in weights), key
        return self._packed

    def _same_objects(self, weights: tuple[Tensor, ...]) -> bool:
        if len(self._sources) != len(weights):
            return False
        for ref, w in zip(self._sources, weights):
            if ref() is not w:
                return False
        return True

    def __reduce__(self):
        # A copied or pickled model starts without a packed copy and builds its own on first use.
        return (PackedWeight, (self.transpose,))


def _packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, None if bias is None else bias.detach(),
                                              "none", [], "")


class _TrainingLinear(torch.autograd.Function):
    """F.linear with autograd: the forward and the input's gradient run on packed weights (W, and W^T for
    the gradient), the weight's gradient through torch.mm (oneDNN was no faster for that shape). Both packed
    copies are rebuilt once per optimizer step, and reused by every micro-batch in between."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor, packed_t: Tensor) -> Tensor:
        # `weight` is an input only so that autograd routes its gradient here; the math uses the packed copies.
        ctx.save_for_backward(x)
        ctx.packed_t = packed_t
        return _packed_linear(x, packed, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        grad_x = _packed_linear(grad, ctx.packed_t, None) if ctx.needs_input_grad[0] else None
        grad_w = flat.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = flat.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


# Each call shape's first _TRIAL_CALLS calls run packed, the next _TRIAL_CALLS plain, and the faster side is
# kept for the rest of the process. A call is charged the time from its start to the start of the shape's
# next call: that takes in what the kernel does to the cache for the calls between (on an Intel Xeon, the
# packed 32000 x 512 head was faster per call, but a decode step with it was 7% slower), and a kernel timed
# alone on one cache-resident weight picked the wrong side. The sides run in blocks because alternating
# between the two copies of a weight keeps both out of cache, which is not how the winner will run.
_TRIAL_CALLS = 8
_choices: dict[tuple, bool] = {}  # (call, dtype, weight shape(s), row bucket) -> whether packed is faster


class _Trial:
    def __init__(self) -> None:
        self.calls = 0
        self.last_start: float | None = None
        self.gaps: tuple[list[float], list[float]] = ([], [])  # seconds from a call to the next: packed, plain

    def side(self, call: int) -> int:
        return 0 if call < _TRIAL_CALLS else 1


_trials: dict[tuple, _Trial] = {}  # call shapes still on trial
_Out = TypeVar("_Out")  # a Tensor, or the list of a grouped call


def _row_bucket(x: Tensor) -> int:
    """The call's rows (all dimensions but the last) rounded up to a power of two: 1, 2, 4, 8, ..."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return 1 << max(rows - 1, 0).bit_length()


def _run_faster(key: tuple, packed_call: Callable[[], _Out], plain_call: Callable[[], _Out]) -> _Out:
    """Run the packed or the plain call for this call shape: packed above `_TIMED_ROWS` rows (key[-1]) or with
    INTERNVL35_PACKED_LINEAR=1; plain below, or with =trial whichever won the shape's trial (see `_TRIAL_CALLS`)."""
    if _ALWAYS_PACKED or key[-1] > _TIMED_ROWS:
        return packed_call()
    if not _TIMED:
        return plain_call()
    choice = _choices.get(key)
    if choice is not None:
        return packed_call() if choice else plain_call()
    trial = _trials.setdefault(key, _Trial())
    now = time.perf_counter()
    if trial.last_start is not None:
        trial.gaps[trial.side(trial.calls - 1)].append(now - trial.last_start)
    if trial.calls == 2 * _TRIAL_CALLS:  # every call of the trial has its gap: decide, then run the winner
        packed_gaps, plain_gaps = trial.gaps
        choice = _choices[key] = statistics.median(packed_gaps) <= statistics.median(plain_gaps)
        _trials.pop(key, None)  # (another thread may have decided it too)
        log.debug("linear %s: %s", key, "packed" if choice else "F.linear")
        return packed_call() if choice else plain_call()
    trial.last_start = now
    trial.calls += 1
    return packed_call() if trial.side(trial.calls - 1) == 0 else plain_call()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, packed: PackedWeight,
           packed_t: PackedWeight | None = None) -> Tensor:
    """F.linear(x, weight, bias), on packed weights when the call qualifies (see the module docstring).

    With autograd on, `packed_t` (a transposing PackedWeight) is needed for the input's gradient; without
    one, training calls take F.linear.
    """
    if not _packable(x, weight, bias):
        return F.linear(x, weight, bias)
    if _needs_grad(x, weight, bias):
        if x.dtype != torch.float32:  # training on packed weights is measured and tested in fp32 only
            return F.linear(x, weight, bias)
        w = packed.get(weight)
        w_t = None if packed_t is None or w is None else packed_t.get(weight)
        if w_t is None:
            return F.linear(x, weight, bias)
        return _TrainingLinear.apply(x, weight, bias, w, w_t)

    def packed_call() -> Tensor:  # checks the packed copy only when it is the one to run
        w = packed.get(weight)
        return F.linear(x, weight, bias) if w is None else _packed_linear(x, w, bias)

    key = ("linear", x.dtype, *weight.shape, bias is not None, _row_bucket(x))
    return _run_faster(key, packed_call, lambda: F.linear(x, weight, bias))


def grouped_linear(x: Tensor, layers: Sequence[nn.Linear], packed: PackedWeight) -> list[Tensor]:
    """[layer(x) for layer in layers] for bias-free layers sharing an input (q/k/v, gate/up).

    Packed, it is one matmul over the stacked weights: a decode step is dominated by per-call costs, and
    this saves 3 of a Qwen3 layer's 7. The outputs are views into the one result. On the CPU fp32 inference
    path the modules are not called (their forward hooks do not run): the alternative timed against the
    packed matmul is one `F.linear` per weight.
    """
    separate = lambda: [layer(x) for layer in layers]  # noqa: E731
    for layer in layers:
        if layer.bias is not None or not _packable(x, layer.weight, None) or _needs_grad(x, layer.weight, None):
            return separate()
    sizes = [layer.out_features for layer in layers]

    def packed_call() -> list[Tensor]:
        w = packed.get(*(layer.weight for layer in layers))
        return separate() if w is None else list(_packed_linear(x, w, None).split(sizes, dim=-1))

    key = ("grouped", x.dtype, *sizes, layers[0].in_features, _row_bucket(x))
    return _run_faster(key, packed_call, lambda: [F.linear(x, layer.weight) for layer in layers])


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) that runs on packed weights on CPU in fp32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self._packed_weight = PackedWeight()
        self._packed_weight_t = PackedWeight(transpose=True)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self._packed_weight, self._packed_weight_t)
