#!/usr/bin/env bash
# Time the protocol config (config/protocol.yaml) on a synthetic 150,000-block dataset of v7 shape for a fixed
# number of Stage-2 epochs, and project the wall time of the 5 arms x 10 seeds sweep (benchmarks/gpu_sweep.py:
# eager, CUDA graph, CUDA graph + bf16 and torch.compile runs, K runs packed on one GPU, one Stage-1 epoch).
#
#   benchmarks/gpu_sweep.sh [EPOCHS=4] [BLOCKS=150000] [DEVICE=auto] [extra gpu_sweep.py options]
set -euo pipefail
EPOCHS=${1:-4}
BLOCKS=${2:-150000}
DEVICE=${3:-auto}
shift $(( $# < 3 ? $# : 3 ))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" "$ROOT/benchmarks/gpu_sweep.py" --epochs "$EPOCHS" --blocks "$BLOCKS" --device "$DEVICE" "$@"
