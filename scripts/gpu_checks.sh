#!/usr/bin/env bash
# The checks only a GPU can make, as one prepared command for a lent machine (/work/.library/device/README.md).
# That machine's python3 holds torch, transformers and pytest and reaches no registry, so the package runs from
# the checkout (PYTHONPATH), not from an install. Each step has its own time limit; the whole fits in ~12 minutes.
#
#     OUT=/tmp/gpu bash scripts/gpu_checks.sh        # logs land in $OUT
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
step() {  # step NAME SECONDS COMMAND...: run, keep the log, go on whatever happens
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.log"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.log"
# Devices, training on the GPU, no host sync inside the decoder (tests/test_cuda.py); then the engine's own
# tests and the parity tests against transformers, which run on the CPU there too (a different torch).
step tests 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_host_sync.py \
    tests/test_engine.py tests/test_parity_hf.py
step bf16_parity 120 python3 scripts/bf16_parity.py --device cuda
step sdpa_backends 60 python3 scripts/sdpa_backends.py --device cuda  # do masked grouped-query calls avoid the math kernel?
step generate 300 python3 bench/generate.py --device cuda --dtype bfloat16 --repeats 3
step moe 120 python3 bench/moe.py --device cuda --dtype bfloat16 --repeats 20
