"""Optimizer steps over resident data: an eager loop, or one CUDA graph per step shape.

A training step here is: gather the batch from the resident tensors, forward (optionally under bf16
autocast), loss in float32, backward, optimizer step, and add the loss to a device accumulator. Nothing in
it reads a value back to the host, so an epoch is a stream of kernel launches. At batch 128 a Stage-2 step is
~9 MFLOP per sample (forward and backward) spread over ~150 small kernels: on a GPU the step is bound by launch
overhead, not by arithmetic (149,000 samples/s graphed on an H200 is ~1.3 TFLOP/s; docs/performance.md).
``StepRunner`` with ``cuda_graph=True`` therefore runs a few eager warm-up steps (real steps of the epoch, on a
side stream, so lazy initialisation stays out of the capture), captures the whole step once into a
``torch.cuda.CUDAGraph`` whose batch indices live in a static buffer, and replays it for every full-size
batch; a shorter last batch runs eagerly. The kernels are the same as in eager mode (dropout draws
its Philox offsets from the same generator), so results match the eager loop to float rounding
(tests/test_steps.py, CUDA only).

Requirements the trainers meet for capture: the optimizer is built with ``capturable=True`` and its learning
rates are device tensors (``ReduceLROnPlateau`` updates them in place with ``fill_``), and nothing in the
step synchronises with the host (tests/test_losses.py proves that for the losses on the meta device).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch

log = logging.getLogger("lossablation.train.steps")

Forward = Callable[[torch.Tensor], torch.Tensor]


def autocast(device: torch.device, enabled: bool, cache_enabled: bool = True):
    """bf16 autocast on ``device`` when ``enabled`` (the weight cache must be off inside a graph capture)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled,
                          cache_enabled=cache_enabled)


def make_adamw(param_groups: Iterable, weight_decay: float, device: torch.device, lr: float = 1e-3,
               cuda_graph: bool = False) -> torch.optim.AdamW:
    """Fused AdamW (one kernel for all parameters, CPU and CUDA); capturable when steps are graphed."""
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=True,
                             capturable=bool(cuda_graph and device.type == "cuda"))


def learning_rate(group: dict) -> float:
    """A param group's learning rate as a float (it is a device tensor once steps are graphed)."""
    return float(group["lr"])


def batch_slices(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Consecutive batches of ``order``; a trailing batch of one sample is dropped (train-mode BatchNorm
    cannot normalise a single sample)."""
    batches = list(torch.split(order, batch_size))
    if batches and batches[-1].numel() < 2:
        batches.pop()
    return batches


class StepRunner:
    """Runs passes of optimizer steps over index batches (tensors on the device) of resident ``inputs`` /
    ``targets``, with no host sync; eager unless ``cuda_graph`` (CUDA only).

    ``epoch`` returns the mean batch loss and an all-finite flag, both still on the device (the caller reads
    them once per epoch).
    """

    def __init__(self, forward: Forward, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, bf16: bool = False,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None, cuda_graph: bool = False,
                 warmup_steps: int = 3) -> None:
        self.forward, self.loss_fn, self.optimizer = forward, loss_fn, optimizer
        self.inputs, self.targets, self.device = inputs, targets, device
        self.bf16, self.prepare = bf16, prepare
        self.cuda_graph = bool(cuda_graph and device.type == "cuda")
        self.warmup_steps = warmup_steps
        self.loss_sum = torch.zeros((), device=device)
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: torch.Tensor | None = None
        self.eager_steps = 0
        self.graph_steps = 0
        self.lr_tensors: list[torch.Tensor] | None = None

    # one step, eager or under capture
    def _step(self, idx: torch.Tensor, capturing: bool = False) -> None:
        xb = self.inputs[idx]
        if self.prepare is not None:
            xb = self.prepare(xb)
        with autocast(self.device, self.bf16, cache_enabled=not capturing):
            logits = self.forward(xb)
        loss = self.loss_fn(logits.float(), self.targets[idx])
        if not capturing:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        self.loss_sum += loss
        self.finite &= torch.isfinite(loss)

    def _device_learning_rates(self) -> None:
        """Learning rates as device tensors that keep their address, so a captured step reads the current
        value: a scheduler that fills the tensor in place is followed as is; one that rebinds the group's
        ``lr`` to a float (older torch) has the value copied back into the captured tensor here."""
        if self.lr_tensors is None:
            self.lr_tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device)
                               for g in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.lr_tensors):
            if group["lr"] is not lr:
                lr.fill_(float(group["lr"]))
                group["lr"] = lr

    def _warmup_step(self, idx: torch.Tensor) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._step(idx)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self, idx: torch.Tensor) -> bool:
        """Capture the step for batches of ``idx``'s size; False (and eager from then on) if capture fails."""
        self.static_idx = idx.clone()
        self.optimizer.zero_grad(set_to_none=True)   # backward inside the capture allocates the grads
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step(self.static_idx, capturing=True)
        except RuntimeError as exc:
            log.warning("CUDA graph capture failed (%s); continuing with eager steps", exc)
            self.cuda_graph, self.static_idx = False, None
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.graph = graph
        return True

    def epoch(self, batches: list[torch.Tensor],
              on_batch: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.loss_sum.zero_()
        self.finite.fill_(True)
        if self.cuda_graph:
            self._device_learning_rates()
        for i, idx in enumerate(batches, 1):
            self._run(idx)
            if on_batch is not None:
                on_batch(i, len(batches))
        return self.loss_sum / max(1, len(batches)), self.finite.clone()

    def _run(self, idx: torch.Tensor) -> None:
        if self.graph is not None and idx.numel() == self.static_idx.numel():
            self.static_idx.copy_(idx)
            self.graph.replay()
            self.graph_steps += 1
        elif self.cuda_graph and self.graph is None and self.eager_steps < self.warmup_steps:
            self._warmup_step(idx)
            self.eager_steps += 1
        elif self.cuda_graph and self.graph is None and self._capture(idx):
            self.graph.replay()          # capture records the step without running it
            self.graph_steps += 1
        else:
            self._step(idx)
            self.eager_steps += 1

