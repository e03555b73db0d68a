"""Stage-2 training throughput: a typical research loop vs our trainer's step, in one process.

Reference loop: DataLoader over a TensorDataset of images (shuffle), the plain module forward through the
whole frozen backbone, a per-batch ``loss.item()`` and ``.cpu()`` of the predictions (as research code does).
Ours: ``lossablation.train.steps.StepRunner`` on the resident h3 features with the exact fast path
(``lossablation.model.fastpath``): the frozen prefix is computed once (its cost is reported separately). And a pack
(``lossablation.train.pack.PackSteps``): ``--members K`` runs trained together as one batched model, each on its
own batches; its samples/s count every member's samples.

Data: resources/demo/av1_demo.npz (the Stage-2 blocks of its training split) when present, else synthetic
v7-shaped data (20,000 blocks). Prints samples/s of the loops, peak memory and a last line ``speedup: X.XX``: the
pack of ``--members`` runs (the workflow's ``train.runs_per_job``) against the reference loop.

    PYTHONPATH=src python benchmarks/train_throughput.py [--steps 150] [--batch-size 128] [--device cpu] [--members 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lossablation.model.fastpath import FastStage2, compute_h3  # noqa: E402
from lossablation.train.losses import DEFAULT_ARMS, build_arm_loss  # noqa: E402
from lossablation.model.networks import build_stage2_model  # noqa: E402
from lossablation.train.steps import StepRunner, batch_slices, make_adamw  # noqa: E402
from lossablation.train.environment import set_determinism  # noqa: E402

DEMO = ROOT / "resources" / "demo" / "av1_demo.npz"
BASELINE = DEFAULT_ARMS["baseline"]   # focal, gamma 2, class-balanced weights


def load_data(n_synthetic: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if DEMO.exists():
        from lossablation.config import load_config
        from lossablation.data.splits import make_splits
        from lossablation.data.targets import stage2_targets

        # the schema's default split (seed 0, 15 % val, 15 % test) and classes
        splits = make_splits(load_config({"dataset": str(DEMO), "losses": {"baseline": BASELINE}}, check_paths=False))
        y = stage2_targets(splits.train.partition)
        keep = y >= 0
        return splits.train.x[keep], y[keep], f"{DEMO.name} (Stage-2 train blocks)"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 1024, (n_synthetic, 1, 16, 16), generator=g).float() / 1023
    y = torch.randint(0, 3, (n_synthetic,), generator=g)
    return x, y, f"synthetic v7-shaped ({n_synthetic} blocks)"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_run(device: torch.device, counts: list[int], ours: bool = False, cuda_graph: bool = False):
    """Model, loss and AdamW: the default for-loop AdamW for the reference, ours as in lossablation.train.stage2."""
    torch.manual_seed(0)
    model = build_stage2_model(None).to(device)
    loss_fn = build_arm_loss(BASELINE, counts, 0.9999, "loss_weights").to(device)
    groups = [{"params": list(model.adapters.parameters()), "lr": 1e-3},
              {"params": list(model.head.parameters()), "lr": 1e-4}]
    if ours:
        optimizer = make_adamw(groups, 0.01, device, cuda_graph=cuda_graph)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    return model, loss_fn, optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_loop(x, y, device, batch_size, steps, counts) -> float:
    """Typical research code: DataLoader, full forward, per-batch .item() and .cpu()."""
    model, loss_fn, optimizer = make_run(device, counts)
    model.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0), drop_last=True)
    losses, preds, done, warm = [], [], 0, 5
    t0 = None
    while done < steps + warm:
        for xb, yb in loader:
            if done == warm:
                sync(device)
                t0 = time.perf_counter()
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            preds.append(logits.argmax(1).cpu())
            done += 1
            if done == steps + warm:
                break
    sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def our_loop(x, y, device, batch_size, steps, counts, eval_batch_size=8192, cuda_graph=False,
             bf16=False) -> tuple[float, float]:
    """Our trainer's step (StepRunner on resident h3 via the fast path); returns (samples/s, prefix seconds)."""
    model, loss_fn, optimizer = make_run(device, counts, ours=True, cuda_graph=cuda_graph)
    sync(device)
    t = time.perf_counter()
    h3 = compute_h3(model, x.to(device), eval_batch_size)
    yd = y.to(device)
    sync(device)
    prefix_s = time.perf_counter() - t
    fast = FastStage2(model).to(device)
    model.train()
    gen = torch.Generator().manual_seed(0)

    def batches(n_steps: int) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        while len(out) < n_steps:
            out += batch_slices(torch.randperm(x.shape[0], generator=gen).to(device), batch_size)[:-1]
        return out[:n_steps]

    runner = StepRunner(fast, loss_fn, optimizer, h3, yd, device, bf16, cuda_graph=cuda_graph)
    loss, _ = runner.epoch(batches(5))   # warm-up (and, with a CUDA graph, its capture)
    loss.item()
    todo = batches(steps)
    sync(device)
    t0 = time.perf_counter()
    loss, finite = runner.epoch(todo)
    loss.item(), finite.item()   # the one host sync per pass
    return steps * batch_size / (time.perf_counter() - t0), prefix_s


def packed_loop(x, y, device, batch_size, steps, counts, members, bf16=False, eval_batch_size=8192) -> float:
    """A pack of ``members`` runs (PackSteps: one batched forward/backward, each member's own AdamW step);
    samples/s over all members' samples."""
    from lossablation.model.networks import Stage2Model
    from lossablation.model.packed import PackedStage2
    from lossablation.train.pack import PackSteps

    first, loss_fn, _ = make_run(device, counts, ours=True)
    models = [first]
    for k in range(1, members):
        torch.manual_seed(k)
        model = Stage2Model()
        model.backbone = first.backbone          # one frozen backbone, as in a training job
        model.freeze_backbone()
        models.append(model.to(device))
    h3 = compute_h3(first, x.to(device), eval_batch_size)
    yd = y.to(device)
    optimizers = [make_adamw([{"params": list(m.adapters.parameters()), "lr": 1e-3},
                              {"params": list(m.head.parameters()), "lr": 1e-4}], 0.01, device) for m in models]
    gens = [torch.Generator(device).manual_seed(k) for k in range(members)]
    runner = PackSteps(PackedStage2(FastStage2(first).to(device), models, gens), loss_fn=loss_fn,
                       optimizers=optimizers, inputs=h3, targets=yd, bf16=bf16)
    for model in models:
        model.train()
    orders = [torch.Generator().manual_seed(100 + k) for k in range(members)]

    def batches(n_steps: int) -> list[list[torch.Tensor]]:
        out: list[list[torch.Tensor]] = []
        for gen in orders:
            mine: list[torch.Tensor] = []
            while len(mine) < n_steps:
                mine += batch_slices(torch.randperm(x.shape[0], generator=gen).to(device), batch_size)[:-1]
            out.append(mine[:n_steps])
        return out

    everyone = list(range(members))
    runner.epoch(batches(3), everyone)[0].sum().item()      # warm-up
    todo = batches(steps)
    sync(device)
    t0 = time.perf_counter()
    loss, finite = runner.epoch(todo, everyone)
    loss.sum().item(), finite.all().item()
    return steps * batch_size * members / (time.perf_counter() - t0)


def stage1_throughput(x, device, batch_size, steps, channels_last, cuda_graph=False) -> float:
    """Stage-1 training samples/s (whole backbone + binary head) with our step loop."""
    import torch.nn.functional as F

    from lossablation.model.networks import Stage1Model

    torch.manual_seed(0)
    model = Stage1Model().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_adamw(model.parameters(), 1e-4, device, lr=1e-3, cuda_graph=cuda_graph)
    xd = x.to(device)
    yd = torch.randint(0, 2, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(device)
    prepare = (lambda xb: xb.contiguous(memory_format=torch.channels_last)) if channels_last else None
    gen = torch.Generator().manual_seed(0)
    batches = batch_slices(torch.randperm(x.shape[0], generator=gen).to(device), batch_size)
    model.train()
    runner = StepRunner(model, F.cross_entropy, optimizer, xd, yd, device, prepare=prepare, cuda_graph=cuda_graph)
    runner.epoch(batches[:5])[0].item()
    sync(device)
    t0 = time.perf_counter()
    runner.epoch(batches[5:5 + steps])[0].item()
    sync(device)
    return min(steps, len(batches) - 5) * batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--synthetic-blocks", type=int, default=20_000)
    ap.add_argument("--stage1-steps", type=int, default=0, help="also time Stage-1 steps (batch 256)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                    help="graph our step on CUDA (default: on for cuda, as train.cuda_graphs)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for our step")
    ap.add_argument("--members", type=int, nargs="+", default=[3],
                    help="pack sizes to time (train.runs_per_job); the last line compares the first one")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    set_determinism(True)
    x, y, source = load_data(args.synthetic_blocks)
    counts = torch.bincount(y, minlength=3).tolist()
    print(f"data: {source}: {x.shape[0]} blocks, classes {counts}; device {device}, "
          f"{torch.get_num_threads()} threads; batch {args.batch_size}, {args.steps} timed steps")

    rss0 = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ref = reference_loop(x, y, device, args.batch_size, args.steps, counts)
    rss1 = peak_rss_mib()
    gpu_ref = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    graph = device.type == "cuda" if args.cuda_graph is None else args.cuda_graph
    ours, prefix_s = our_loop(x, y, device, args.batch_size, args.steps, counts, cuda_graph=graph, bf16=args.bf16)
    rss2 = peak_rss_mib()
    gpu_ours = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    print(f"reference loop (DataLoader, full forward, per-batch .item()/.cpu()): {ref:,.0f} samples/s")
    print(f"our trainer step (resident h3, exact fast path, one sync per pass, cuda_graph={graph}, "
          f"bf16={args.bf16}): {ours:,.0f} samples/s")
    packs = {k: packed_loop(x, y, device, args.batch_size, max(10, args.steps // k), counts, k, bf16=args.bf16)
             for k in args.members}
    for k, rate in packs.items():
        print(f"our pack of {k} runs (one batched step for all members, bf16={args.bf16}): {rate:,.0f} samples/s "
              f"(all members), {rate / ref:.2f}x the reference loop")
    print(f"our one-off frozen-prefix pass over {x.shape[0]} blocks: {prefix_s:.2f} s "
          f"({x.shape[0] / prefix_s:,.0f} blocks/s)")
    epoch_ref = x.shape[0] / ref
    epoch_ours = x.shape[0] / ours
    print(f"one epoch over these blocks: reference {epoch_ref:.1f} s, ours {epoch_ours:.2f} s "
          f"(+{prefix_s:.2f} s once per run)")
    print(f"peak RSS: start {rss0:.0f} MiB, after reference {rss1:.0f} MiB (+{rss1 - rss0:.0f}), "
          f"after ours {rss2:.0f} MiB (+{rss2 - rss1:.0f})")
    if gpu_ref is not None:
        print(f"peak GPU memory: reference {gpu_ref:.0f} MiB, ours {gpu_ours:.0f} MiB")
    if args.stage1_steps:
        for cl in (False, True):
            s1 = stage1_throughput(x, device, 256, args.stage1_steps, cl, graph)
            print(f"stage 1 training (channels_last={cl}, cuda_graph={graph}): {s1:,.0f} samples/s; "
                  f"20,000-block epoch {20_000 / s1:.1f} s")
    print(f"speedup of one run alone: {ours / ref:.2f}")
    print(f"speedup: {packs[args.members[0]] / ref:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
