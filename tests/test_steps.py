"""lossablation.train.steps: the eager step loop, the CUDA-graphed one, and what the graph relies on.

The CUDA tests (graphed == eager to float rounding, including a learning-rate change after capture, a short
last batch and dropout; Stage 1 with BatchNorm and channels_last; a graphed run killed and resumed) run where
a GPU is present: on the lent H200 through benchmarks/device_check.sh. CI has no GPU and skips them.
"""

from __future__ import annotations

import signal

import pytest
import torch
import torch.nn.functional as F
from test_training import comparable, run_cli, synthetic_blockset, write_config

from lossablation.data.blocks import save_npz
from lossablation.model.fastpath import FastStage2, compute_h3
from lossablation.train.losses import build_arm_loss
from lossablation.model.networks import Stage1Model, build_stage2_model, stage1_checkpoint_dict
from lossablation.train.steps import StepRunner, batch_slices, learning_rate, make_adamw
from lossablation.train.environment import set_determinism, use_cuda_graph

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_batch_slices_drop_a_single_sample_tail():
    sizes = [b.numel() for b in batch_slices(torch.arange(257), 128)]
    assert sizes == [128, 128]
    assert [b.numel() for b in batch_slices(torch.arange(258), 128)] == [128, 128, 2]


def test_cuda_graph_only_on_cuda_and_not_with_compile():
    defaults = {"cuda_graphs": True, "compile": False}          # the schema's defaults of train.*
    assert not use_cuda_graph(torch.device("cpu"), {**defaults, "cuda_graphs": True})
    assert use_cuda_graph(torch.device("cuda"), defaults)
    assert not use_cuda_graph(torch.device("cuda"), {**defaults, "cuda_graphs": False})
    assert not use_cuda_graph(torch.device("cuda"), {**defaults, "compile": True})
    assert not make_adamw([torch.zeros(2, requires_grad=True)], 0.0, torch.device("cpu"), cuda_graph=True) \
        .param_groups[0]["capturable"]


def test_plateau_scheduler_updates_a_tensor_learning_rate_in_place():
    """A captured AdamW step reads lr from device memory: the scheduler must fill_ it, not rebind it."""
    opt = torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=1e-3, fused=True)
    lr = torch.tensor(1e-3)
    opt.param_groups[0]["lr"] = lr
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    sched.step(0.5)
    sched.step(0.5)      # no improvement with patience 0: halve
    assert opt.param_groups[0]["lr"] is lr
    assert learning_rate(opt.param_groups[0]) == pytest.approx(5e-4)


def stage2_run(device: torch.device, graph: bool, epochs: int = 3, n: int = 1000):
    """Three epochs of Stage-2 steps (7 full batches of 128 and one of 104 each), lr halved before epoch 3."""
    set_determinism(True)
    torch.manual_seed(0)
    model = build_stage2_model(None).to(device)
    fast = FastStage2(model).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 16, 16, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    h3 = compute_h3(model, x.to(device))
    loss_fn = build_arm_loss({"kind": "focal", "params": {"gamma": 2.0}, "weighting": "class_balanced"},
                             torch.bincount(y).tolist(), 0.9999, "loss_weights").to(device)
    opt = make_adamw([{"params": list(model.adapters.parameters()), "lr": 1e-3},
                      {"params": list(model.head.parameters()), "lr": 1e-4}], 0.01, device, cuda_graph=graph)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    runner = StepRunner(fast, loss_fn, opt, h3, y.to(device), device, cuda_graph=graph)
    torch.manual_seed(2)                    # the dropout stream
    losses = []
    for _ in range(epochs):
        model.train()
        batches = batch_slices(torch.randperm(n, generator=gen).to(device), 128)
        loss, finite = runner.epoch(batches)
        losses.append(loss.item())
        assert finite.item()
        sched.step(0.0)
    state = {k: v.detach().float().cpu() for k, v in model.trainable_state_dict().items()}
    return losses, state, runner, [learning_rate(g) for g in opt.param_groups]


def test_eager_runner_on_cpu_ignores_the_graph_flag():
    a = stage2_run(torch.device("cpu"), graph=False, epochs=2, n=400)
    b = stage2_run(torch.device("cpu"), graph=True, epochs=2, n=400)
    assert b[2].graph is None and b[2].graph_steps == 0
    assert a[0] == b[0]
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k


@cuda
def test_graphed_stage2_steps_match_eager_on_cuda():
    device = torch.device("cuda")
    eager = stage2_run(device, graph=False)
    graphed = stage2_run(device, graph=True)
    runner = graphed[2]
    assert runner.graph is not None
    assert runner.graph_steps == 3 * 7 - 3          # 3 eager warm-up steps, then every full batch replays
    assert runner.eager_steps == 3 + 3              # warm-up + the three short last batches
    assert eager[3] == [2.5e-4, 2.5e-5]             # halved twice (after epochs 2 and 3)
    assert graphed[3] == pytest.approx(eager[3], rel=1e-6)   # float32 device tensors when graphed
    assert graphed[0] == pytest.approx(eager[0], rel=1e-5, abs=1e-7)
    for k, v in eager[1].items():
        torch.testing.assert_close(graphed[1][k], v, rtol=1e-5, atol=1e-6, msg=k)


@cuda
def test_graphed_stage1_steps_match_eager_on_cuda():
    device = torch.device("cuda")
    out = {}
    for graph in (False, True):
        set_determinism(True)
        torch.manual_seed(0)
        model = Stage1Model().to(device).to(memory_format=torch.channels_last)
        opt = make_adamw(model.parameters(), 1e-4, device, lr=1e-3, cuda_graph=graph)
        gen = torch.Generator().manual_seed(3)
        x = torch.rand(1100, 1, 16, 16, generator=gen).to(device)
        y = torch.randint(0, 2, (1100,), generator=gen).to(device)
        runner = StepRunner(model, F.cross_entropy, opt, x, y, device,
                            prepare=lambda xb: xb.contiguous(memory_format=torch.channels_last), cuda_graph=graph)
        model.train()
        loss, _ = runner.epoch(batch_slices(torch.randperm(1100, generator=gen).to(device), 256))
        out[graph] = (loss.item(), {k: v.float().cpu() for k, v in model.state_dict().items()}, runner)
    assert out[True][2].graph_steps == 4 - 3
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-5)
    for k, v in out[False][1].items():
        torch.testing.assert_close(out[True][1][k], v, rtol=1e-4, atol=1e-5, msg=k)


@cuda
def test_graphed_run_killed_and_resumed_on_cuda(tmp_path):
    dataset = tmp_path / "blocks.npz"
    save_npz(dataset, synthetic_blockset(1200))
    torch.manual_seed(0)
    ckpt = tmp_path / "stage1_model_best.pt"
    torch.save(stage1_checkpoint_dict(Stage1Model(), epoch=1, best_f1=0.5), ckpt)
    config = tmp_path / "config.yaml"
    config.write_text(write_config(tmp_path, dataset).read_text().replace("device: cpu", "device: cuda"))
    whole = run_cli(config, ckpt, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = run_cli(config, ckpt, tmp_path / "killed", fault="kill_after_state=3")
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(config, ckpt, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 3" in resumed.stderr
    a, b = comparable(tmp_path / "whole"), comparable(tmp_path / "killed")
    assert a["metrics"]["epochs_run"] == b["metrics"]["epochs_run"]
    assert [r["lr_adapter"] for r in a["history"]] == [r["lr_adapter"] for r in b["history"]]
    assert a["metrics"]["test"]["macro_f1"] == pytest.approx(b["metrics"]["test"]["macro_f1"], abs=0.02)
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], rtol=1e-3, atol=1e-4, msg=k)
