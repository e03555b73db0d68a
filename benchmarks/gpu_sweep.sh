#!/usr/bin/env bash
# Time the protocol config (config/protocol.yaml) on a synthetic 150,000-block dataset of v7 shape for a fixed
# number of Stage-2 epochs, and project the wall time of the 5 arms x 10 seeds sweep.
#
#   benchmarks/gpu_sweep.sh [EPOCHS=3] [BLOCKS=150000] [DEVICE=auto]
#
# Uses a random Stage-1 checkpoint in the v7 layout (Stage 1 is timed separately for one epoch), runs
# `python -m lossablation.cli train` for the baseline arm, reads history.csv and prints samples/s, seconds per
# epoch and the projected sweep time (at the v7 typical 18 epochs per run, and at the 50-epoch maximum).
set -euo pipefail
EPOCHS=${1:-3}
BLOCKS=${2:-150000}
DEVICE=${3:-auto}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT_DIR:-$ROOT/benchmarks/out/gpu_sweep}
mkdir -p "$OUT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - "$ROOT" "$OUT" "$EPOCHS" "$BLOCKS" "$DEVICE" <<'PYEOF'
import sys, time, yaml, numpy as np, torch
from pathlib import Path
root, out, epochs, blocks, device = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
from lossablation.data import BlockSet, save_npz
from lossablation.models import Stage1Model, stage1_checkpoint_dict
rng = np.random.default_rng(0)
# v7 class mix: NONE 58 %, SPLIT 5 %, RECT (HORZ, VERT) 20 %, AB 17 %; 10-bit luma
part = rng.choice([0, 3, 1, 2, 4, 5, 6, 7], size=blocks, p=[.58, .05, .10, .10, .0425, .0425, .0425, .0425])
ds = BlockSet(blocks=rng.integers(0, 1024, size=(blocks, 1, 16, 16), dtype=np.uint16), partition=part, bit_depth=10)
save_npz(out / "synthetic.npz", ds)
torch.manual_seed(0)
torch.save(stage1_checkpoint_dict(Stage1Model(), epoch=1, best_f1=0.0), out / "stage1_random.pt")
cfg = yaml.safe_load((root / "config" / "protocol.yaml").read_text())
cfg["dataset"] = str(out / "synthetic.npz")
cfg["device"] = device
cfg["stage1_checkpoint"] = str(out / "stage1_random.pt")
cfg["train"]["max_epochs"] = epochs
cfg["train"]["patience"] = epochs + 1
cfg["stage1"]["max_epochs"] = 1
(out / "config.yaml").write_text(yaml.safe_dump(cfg))
print(f"wrote {out}/synthetic.npz ({blocks} blocks) and {out}/config.yaml ({epochs} epochs)")
PYEOF

START=$(date +%s.%N)
"$PY" -m lossablation.cli train --config "$OUT/config.yaml" --arm baseline --seed 1 \
    --stage1 "$OUT/stage1_random.pt" --out "$OUT/run" 2>&1 | tail -n $((EPOCHS + 2))
END=$(date +%s.%N)
S1START=$(date +%s.%N)
"$PY" -m lossablation.cli train-stage1 --config "$OUT/config.yaml" --out "$OUT/stage1" 2>&1 | tail -n 2
S1END=$(date +%s.%N)

"$PY" - "$OUT" "$START" "$END" "$S1START" "$S1END" <<'PYEOF'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1]); start, end, s1start, s1end = map(float, sys.argv[2:6])
m = json.loads((out / "run" / "metrics.json").read_text())
rows = list(csv.DictReader(open(out / "run" / "history.csv")))
n_train = sum(m["train_class_counts"].values())
# the first epoch includes warm-up (and torch.compile when enabled): use the later ones when there are any
steady = [float(r["seconds"]) for r in rows[1:]] or [float(r["seconds"]) for r in rows]
epoch_s = sum(steady) / len(steady)
run_total = end - start
overhead = max(0.0, run_total - sum(float(r["seconds"]) for r in rows))
print(f"device: {m['provenance']['device']}")
print(f"stage 2: {n_train} training blocks, {epoch_s:.2f} s/epoch (incl. validation), "
      f"{n_train / epoch_s:,.0f} samples/s; per-run overhead (start-up, prefix, test eval) {overhead:.1f} s")
for label, ep in (("typical 18 epochs (v7 early stop)", 18), ("maximum 50 epochs", 50)):
    per_run = overhead + ep * epoch_s
    print(f"projected 5 arms x 10 seeds, {label}: {per_run:.0f} s/run, {50 * per_run / 3600:.2f} h sequential")
print(f"stage 1: one epoch + start-up {s1end - s1start:.0f} s (once per sweep)")
PYEOF
