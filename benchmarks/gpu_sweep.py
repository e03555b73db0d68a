"""Time the protocol config on a synthetic v7-shaped dataset and project the 5 arms x 10 seeds sweep.

Runs the real CLI (``lossablation train`` / ``train-stage1``) as separate processes, as the workflow does:

* one Stage-2 run per variant (``eager``, ``graph`` = train.cuda_graphs, ``graph_bf16``, ``compile``) for a
  fixed number of epochs (early stopping off), reading epoch seconds from its ``history.csv``;
* K runs of the ``graph`` variant started together on the same GPU for each K in ``--pack``
  (``resources.runs_per_gpu``: what Snakemake does with ``--resources gpu=K`` on one GPU);
* one process training K seeds together as one batched model for each K in ``--packed``
  (``train.runs_per_job``: a pack, eager on CUDA);
* one Stage-1 epoch eager and graphed.

Samples/s counts training blocks per second of a whole epoch, validation included (conservative). The
projection: per run = start-up overhead + epochs x steady epoch seconds; the sweep = ceil(50 / K) such waves.

    python benchmarks/gpu_sweep.py [--epochs 4] [--blocks 150000] [--device auto] [--pack 4,8] [--packed 5,10]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNS_IN_SWEEP = 50
VARIANTS = {
    "eager": {"cuda_graphs": False},
    "graph": {"cuda_graphs": True},
    "graph_bf16": {"cuda_graphs": True, "bf16": True},
    "compile": {"cuda_graphs": False, "compile": True},
}


def make_inputs(out: Path, blocks: int, epochs: int, device: str) -> dict:
    """Synthetic 10-bit blocks with the v7 class mix, a random v7-layout Stage-1 checkpoint, the base config."""
    import torch

    from lossablation.data.blocks import BlockSet, save_npz
    from lossablation.model.networks import Stage1Model, stage1_checkpoint_dict

    rng = np.random.default_rng(0)
    # v7 class mix: NONE 58 %, SPLIT 5 %, RECT (HORZ, VERT) 20 %, AB 17 %
    part = rng.choice([0, 3, 1, 2, 4, 5, 6, 7], size=blocks, p=[.58, .05, .10, .10, .0425, .0425, .0425, .0425])
    ds = BlockSet(blocks=rng.integers(0, 1024, size=(blocks, 1, 16, 16), dtype=np.uint16), partition=part,
                  bit_depth=10)
    save_npz(out / "synthetic.npz", ds)
    torch.manual_seed(0)
    torch.save(stage1_checkpoint_dict(Stage1Model(), epoch=1, best_f1=0.0), out / "stage1_random.pt")
    cfg = yaml.safe_load((ROOT / "config" / "protocol.yaml").read_text())
    cfg.update(dataset=str(out / "synthetic.npz"), device=device, stage1_checkpoint=str(out / "stage1_random.pt"))
    cfg["train"].update(max_epochs=epochs, patience=epochs + 1)
    cfg["stage1"].update(max_epochs=1)
    return cfg


def write_config(cfg: dict, path: Path, train_overrides: dict) -> Path:
    variant = json.loads(json.dumps(cfg))
    variant["train"].update(train_overrides)
    path.write_text(yaml.safe_dump(variant))
    return path


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def train_cmd(config: Path, arm: str, seed: int | list[int], out: Path | list[Path]) -> list[str]:
    """``lossablation train`` for one (arm, seed), or a pack of seeds (one run folder each), with the random
    Stage-1 checkpoint of ``make_inputs``."""
    seeds, outs = (seed, out) if isinstance(seed, list) else ([seed], [out])
    return [sys.executable, "-m", "lossablation.cli", "train", "--config", str(config), "--arm", arm,
            "--seed", *map(str, seeds), "--stage1", str(config.parent / "stage1_random.pt"),
            "--out", *map(str, outs)]


def run_summary(run: Path, wall: float) -> dict:
    """Epoch seconds (steady: epochs after the first), training blocks, start-up overhead of one run."""
    rows = list(csv.DictReader(open(run / "history.csv")))
    metrics = json.loads((run / "metrics.json").read_text())
    n_train = sum(metrics["train_class_counts"].values())
    seconds = [float(r["seconds"]) for r in rows]
    steady = seconds[1:] or seconds
    epoch_s = sum(steady) / len(steady)
    return {"n_train": n_train, "epoch_s": epoch_s, "first_epoch_s": seconds[0], "epochs": len(rows),
            "overhead_s": max(0.0, wall - sum(seconds)), "wall_s": wall, "samples_per_s": n_train / epoch_s,
            "device": metrics["provenance"]["device"], "status": metrics["status"],
            "val_macro_f1": [float(r["val_macro_f1"]) for r in rows]}


def time_runs(config: Path, out: Path, k: int, timeout: float) -> list[dict]:
    """K concurrent Stage-2 runs (seeds 1..K) of ``config``; their summaries (empty on failure)."""
    procs = []
    t0 = time.perf_counter()
    for seed in range(1, k + 1):
        run = out / f"seed{seed}"
        run.mkdir(parents=True, exist_ok=True)
        procs.append((run, start(train_cmd(config, "baseline", seed, run), run / "train.log")))
    results = []
    for run, proc in procs:
        try:
            rc = proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        wall = time.perf_counter() - t0
        if rc != 0:
            print(f"  {run}: exit {rc}; last lines:\n" + "".join(open(run / "train.log").readlines()[-8:]))
            continue
        results.append(run_summary(run, wall))
    return results


def time_packed(config: Path, out: Path, k: int, timeout: float) -> list[dict]:
    """One process training seeds 1..K of ``config`` together as a pack; the members' summaries (empty on
    failure). Their epoch seconds are the shared training pass plus each member's own validation."""
    runs = [out / f"seed{seed}" for seed in range(1, k + 1)]
    for run in runs:
        run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not finished(start(train_cmd(config, "baseline", list(range(1, k + 1)), runs), out / "train.log"),
                    out, timeout):
        return []
    wall = time.perf_counter() - t0
    return [run_summary(run, wall) for run in runs]


def finished(proc: subprocess.Popen, out: Path, timeout: float) -> bool:
    """Wait for ``proc`` (killed after ``timeout`` s); on failure print the last lines of ``out``/train.log."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    if rc != 0:
        print(f"  {out}: exit {rc}; last lines:\n" + "".join(open(out / "train.log").readlines()[-8:]))
    return rc == 0


def stage1_epoch(config: Path, out: Path, timeout: float) -> dict | None:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = start([sys.executable, "-m", "lossablation.cli", "train-stage1", "--config", str(config),
                  "--out", str(out)], out / "train.log")
    if not finished(proc, out, timeout):
        return None
    rows = list(csv.DictReader(open(out / "history.csv")))
    n = json.loads((out / "metrics.json").read_text())["n_train_blocks"]
    return {"epoch_s": float(rows[0]["seconds"]), "wall_s": time.perf_counter() - t0, "n_train": n,
            "samples_per_s": n / float(rows[0]["seconds"])}


def full_sweep(cfg: dict, out: Path, k: int, deadline_s: float) -> dict:
    """The real 5 arms x 10 seeds Stage-2 sweep of the protocol (early stopping on), K runs at a time, as
    Snakemake runs the training jobs with ``--resources gpu=K``. Stops starting runs after ``deadline_s``."""
    config = write_config({**cfg, "train": {**cfg["train"], "max_epochs": 50, "patience": 15}},
                          out / "config_sweep.yaml", VARIANTS["graph"])
    todo = [(arm, seed) for arm in cfg["losses"] for seed in cfg["seeds"]]
    running: list[tuple[subprocess.Popen, Path]] = []
    done, failed, epochs = 0, 0, []
    t0 = time.perf_counter()
    while todo or running:
        while todo and len(running) < k and time.perf_counter() - t0 < deadline_s:
            arm, seed = todo.pop(0)
            run = out / "sweep" / arm / f"seed{seed}"
            run.mkdir(parents=True, exist_ok=True)
            running.append((start(train_cmd(config, arm, seed, run), run / "train.log"), run))
        if not running:
            break
        time.sleep(0.2)
        for proc, run in list(running):
            if proc.poll() is not None:
                running.remove((proc, run))
                if proc.returncode == 0:
                    done += 1
                    epochs.append(len(list(csv.DictReader(open(run / "history.csv")))))
                else:
                    failed += 1
                print(f"  [{time.perf_counter() - t0:6.1f} s] {run.parent.name}/{run.name}: exit {proc.returncode}; "
                      f"{done} done, {failed} failed, {len(running)} running, {len(todo)} to start", flush=True)
    wall = time.perf_counter() - t0
    return {"runs": done, "failed": failed, "left": len(todo), "wall_s": wall, "runs_at_once": k,
            "mean_epochs": sum(epochs) / max(1, len(epochs))}


def projection(summaries: list[dict], k: int, epochs: int) -> float:
    """Seconds for the 50-run sweep at ``epochs`` per run, K runs at a time (as measured with K together)."""
    per_run = max(s["overhead_s"] + epochs * s["epoch_s"] for s in summaries)
    return math.ceil(RUNS_IN_SWEEP / k) * per_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=150_000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", default="eager,graph,graph_bf16,compile")
    ap.add_argument("--pack", default="4,8", help="comma-separated K: runs started together on one GPU")
    ap.add_argument("--packed", default="5,10", help="comma-separated K: seeds trained as one pack in one process")
    ap.add_argument("--stage1", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--sweep", type=int, default=0,
                    help="also run the real 5 x 10 Stage-2 sweep (early stopping on), this many runs at once")
    ap.add_argument("--sweep-deadline", type=float, default=3600, help="seconds after which no run is started")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_sweep")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = make_inputs(args.out, args.blocks, args.epochs, args.device)
    print(f"data: {args.blocks} synthetic v7-shaped blocks; {args.epochs} epochs per run; protocol batch "
          f"{cfg['train']['batch_size']}", flush=True)

    rows: list[tuple[str, int, list[dict]]] = []
    for name in [v for v in args.variants.split(",") if v]:
        config = write_config(cfg, args.out / f"config_{name}.yaml", VARIANTS[name])
        res = time_runs(config, args.out / name, 1, args.timeout)
        if res:
            s = res[0]
            print(f"{name:>11}: {s['samples_per_s']:>9,.0f} samples/s  epoch {s['epoch_s']:.2f} s (first "
                  f"{s['first_epoch_s']:.2f} s)  overhead {s['overhead_s']:.1f} s  {s['device']}", flush=True)
            rows.append((name, 1, res))
    packed_config = write_config(cfg, args.out / "config_graph.yaml", VARIANTS["graph"])
    for k in [int(v) for v in args.pack.split(",") if v]:
        res = time_runs(packed_config, args.out / f"pack{k}", k, args.timeout)
        if len(res) == k:
            total = sum(s["samples_per_s"] for s in res)
            print(f"{'graph x' + str(k):>11}: {total:>9,.0f} samples/s together "
                  f"({total / k:,.0f} per run)  epoch {max(s['epoch_s'] for s in res):.2f} s  "
                  f"wall {max(s['wall_s'] for s in res):.1f} s", flush=True)
            rows.append((f"graph x{k}", k, res))
    for k in [int(v) for v in args.packed.split(",") if v]:
        config = write_config(cfg, args.out / f"config_packed{k}.yaml", {**VARIANTS["graph"], "runs_per_job": k})
        res = time_packed(config, args.out / f"packed{k}", k, args.timeout)
        if len(res) == k:
            total = sum(s["samples_per_s"] for s in res)
            print(f"{'pack of ' + str(k):>11}: {total:>9,.0f} samples/s together (one process, runs_per_job {k})  "
                  f"epoch {max(s['epoch_s'] for s in res):.2f} s  wall {res[0]['wall_s']:.1f} s", flush=True)
            rows.append((f"pack of {k}", k, res))
    if args.stage1:
        for name in ("eager", "graph"):
            s1 = stage1_epoch(write_config(cfg, args.out / f"config_{name}.yaml", VARIANTS[name]),
                              args.out / f"stage1_{name}", args.timeout)
            if s1:
                print(f"stage 1 {name:>5}: {s1['samples_per_s']:>9,.0f} samples/s  epoch {s1['epoch_s']:.1f} s "
                      f"({s1['n_train']} blocks; wall {s1['wall_s']:.0f} s)", flush=True)

    print("\nprojected 5 arms x 10 seeds sweep (Stage 2; Stage 1 once more):")
    print("| variant | runs at once | samples/s (all runs) | s/epoch | overhead s | 18 epochs | 50 epochs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = []
    for name, k, res in rows:
        total = sum(s["samples_per_s"] for s in res)
        t18, t50 = projection(res, k, 18), projection(res, k, 50)
        epoch_s = max(s["epoch_s"] for s in res)
        overhead = max(s["overhead_s"] for s in res)
        print(f"| {name} | {k} | {total:,.0f} | {epoch_s:.2f} | {overhead:.1f} | {t18 / 60:.1f} min | "
              f"{t50 / 60:.1f} min |")
        summary.append({"variant": name, "runs_at_once": k, "samples_per_s": total, "epoch_s": epoch_s,
                        "overhead_s": overhead, "sweep_18_epochs_s": t18, "sweep_50_epochs_s": t50, "runs": res})
    if args.sweep:
        real = full_sweep(cfg, args.out, args.sweep, args.sweep_deadline)
        print(f"\nmeasured 5 arms x 10 seeds sweep (Stage 2, early stopping on, {real['runs_at_once']} at once): "
              f"{real['runs']} runs in {real['wall_s'] / 60:.1f} min (mean {real['mean_epochs']:.1f} epochs; "
              f"{real['failed']} failed, {real['left']} not started)", flush=True)
        summary.append({"variant": "measured sweep", **real})
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
