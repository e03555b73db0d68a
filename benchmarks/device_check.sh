#!/usr/bin/env bash
# The GPU checks of one device session, in one call (README of the device tool: prepare one script, run once):
#   1. environment (GPU, driver, torch),
#   2. the CUDA tests (tests/test_steps.py: graphed steps == eager steps; a graphed run killed and resumed),
#   3. benchmarks/train_throughput.py on CUDA (reference loop vs our graphed step; Stage-1 steps),
#   4. benchmarks/gpu_sweep.py: protocol config on 150,000 synthetic blocks, variants, packing, projection.
# Python packages missing on the machine travel as wheels in .whl/ (see docs/performance.md).
# Writes logs to $OUT (or benchmarks/out/device); prints the tables last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl 2>&1 | tail -2
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$OUT/env.txt"
echo "== CUDA tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/test_steps.py 2>&1 | tee "$OUT/pytest.txt" | tail -25
echo "== gpu_sweep"
timeout ${SWEEP_TIMEOUT:-240} python3 benchmarks/gpu_sweep.py --epochs 4 --blocks 150000 --variants eager,graph,graph_bf16 \
  --pack 4,8 --timeout 120 --out /tmp/gpu_sweep 2>&1 | tee "$OUT/gpu_sweep.txt"
cp /tmp/gpu_sweep/summary.json "$OUT/" 2>/dev/null
tail -n 4 /tmp/gpu_sweep/*/seed1/train.log > "$OUT/run_logs.txt" 2>/dev/null
echo "== train_throughput (cuda)"
timeout 80 python3 benchmarks/train_throughput.py --device cuda --steps 600 --stage1-steps 60 2>&1 | tee "$OUT/throughput.txt"
timeout 45 python3 benchmarks/train_throughput.py --device cuda --steps 600 --no-cuda-graph 2>&1 | tail -3 | tee -a "$OUT/throughput.txt"
echo "== torch.compile"
timeout 90 python3 benchmarks/gpu_sweep.py --epochs 4 --blocks 150000 --variants compile --pack "" --no-stage1 \
  --timeout 80 --out /tmp/gpu_compile 2>&1 | tee "$OUT/compile.txt"
echo "== summary"; grep -E "passed|failed|error" "$OUT/pytest.txt" | tail -2; grep -E "samples/s|speedup" "$OUT/throughput.txt"
