#!/bin/bash
# The GPU checks of DEVELOPERS.md ("GPU checks"), for a device machine that has torch but not sam3.
# Usage, from the repository root, with the wheels in .whl/ carried along:
#   bash benchmarks/gpu_checks.sh train  [budget_min=6] [timeout_s=430]   # train_step_cuda.json
#   bash benchmarks/gpu_checks.sh layers [budget_scale=0] [timeout_s=300] # lora_layers_cuda.json
#   bash benchmarks/gpu_checks.sh smoke  [timeout_s=150]                  # convert, train 4 steps, eval
# Results go to $OUT/r (the device tool's output folder), logs to $OUT/*.log.
# SKIP_INSTALL=1 SMOKE_DEVICE=cpu SMOKE_SIZE=tiny try the smoke test where sam3 is installed already.
set -o pipefail
[ -n "$SKIP_INSTALL" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 SMOKE_DEVICE=${SMOKE_DEVICE:-cuda} SMOKE_SIZE=${SMOKE_SIZE:-full}
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT/r"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
python3 -c "import sam3, torch; print('sam3', sam3.__version__ if hasattr(sam3, '__version__') else 'ok', 'torch', torch.__version__)" || exit 1

smoke() {  # sam3-lora convert, a random full-size checkpoint in the official layout, train 4 steps, eval
    local work=/tmp/smoke
    rm -rf $work && mkdir -p $work
    python3 -m sam3_lora_kit.cli convert data/sample/yolo-segmentation $work/coco | tail -2 || return 1
    python3 - "$work" "$SMOKE_SIZE" <<'PY' || return 1
import sys, torch
from sam3_lora_kit.sam3 import build_sam3
model = build_sam3(sys.argv[2], device="cpu")
torch.save({"model": {"detector." + key: value for key, value in model.state_dict().items()}}, f"{sys.argv[1]}/sam3.pt")
PY
    python3 -m sam3_lora_kit.cli train --dataset-dir $work/coco --output-dir $work/run --checkpoint $work/sam3.pt \
        --model-size $SMOKE_SIZE --device $SMOKE_DEVICE --steps 4 --no-progress 2>&1 | tail -5 || return 1
    python3 -m sam3_lora_kit.cli eval --run $work/run --device $SMOKE_DEVICE --max-images 4 --json --no-progress 2>&1 | tail -12 || return 1
    python3 -c "import json; d = json.load(open('$work/run/run_summary.json')); print({k: d.get(k) for k in ('peak_memory_mb', 'memory_kind', 'seconds_per_step', 'batch_size', 'image_size', 'precision', 'activation_checkpointing', 'frozen_dtype', 'text_features', 'device_name')})"
}

case "$1" in
  train)  BENCH_FULL_BUDGET_MIN=${2:-6} timeout "${3:-430}" python3 -m benchmarks --only train_step --device cuda --threads 8 --out "$OUT/r" 2>&1 | grep -v -i warn | tee "$OUT/train.log" ;;
  layers) BENCH_LAYERS_BUDGET_SCALE=${2:-0} timeout "${3:-300}" python3 -m benchmarks --only lora_layers --device cuda --out "$OUT/r" 2>&1 | grep -v -i warn | tee "$OUT/layers.log" ;;
  smoke)  export -f smoke; timeout "${2:-150}" bash -c smoke 2>&1 | grep -v -i warn | tee "$OUT/smoke.log" ;;
  *) echo "usage: bash benchmarks/gpu_checks.sh train|layers|smoke [...]" >&2; exit 2 ;;
esac
