"""GPU slot allocator: real processes, real fcntl locks, device counts given by the test (no GPU needed).

The count is passed to ``acquire_gpu_slot`` or, where the allocator asks torch for it, injected from here by
monkeypatching ``lossablation.gpuslots.device_count``: the package has no fake-device switch of its own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from lossablation.errors import LossAblationError
from lossablation import gpuslots
from lossablation.gpuslots import CUDA_ENV, ENV_LOCK_DIR, acquire_gpu_slot, device_count

CTX = mp.get_context("fork")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in (CUDA_ENV, "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(ENV_LOCK_DIR, str(tmp_path / "locks"))


def _hold(n, queue, release, timeout=10.0, cuda_env=None, runs_per_gpu=1):
    """Child: take a slot, report (slot, CUDA_VISIBLE_DEVICES), hold it until `release` is set."""
    if cuda_env is not None:
        os.environ[CUDA_ENV] = cuda_env
    try:
        with acquire_gpu_slot(n, timeout=timeout, poll_s=0.05, runs_per_gpu=runs_per_gpu) as slot:
            queue.put((slot, os.environ.get(CUDA_ENV)))
            release.wait(30)
    except LossAblationError as exc:
        queue.put(("error", str(exc)))


def _crash_holding(n, conn):
    """Child: take a slot, report it (synchronously, over a pipe), then die by SIGKILL inside the with-block."""
    with acquire_gpu_slot(n, timeout=5, poll_s=0.05) as slot:
        conn.send(slot)
        os.kill(os.getpid(), signal.SIGKILL)


def _start(target, *args, **kwargs):
    proc = CTX.Process(target=target, args=args, kwargs=kwargs)
    proc.start()
    return proc


def test_two_concurrent_processes_get_distinct_slots():
    queue, release = CTX.Queue(), CTX.Event()
    procs = [_start(_hold, 2, queue, release, timeout=5) for _ in range(2)]
    got = [queue.get(timeout=10), queue.get(timeout=10)]  # both hold their slot at the same time
    release.set()
    for p in procs:
        p.join(10)
    assert sorted(slot for slot, _ in got) == ["0", "1"]
    assert all(slot == env for slot, env in got)  # the child's CUDA_VISIBLE_DEVICES is its slot


def test_third_process_waits_until_a_slot_is_released():
    queue = CTX.Queue()
    release_a, release_b, release_c = CTX.Event(), CTX.Event(), CTX.Event()
    a = _start(_hold, 2, queue, release_a)
    slot_a = queue.get(timeout=10)[0]
    b = _start(_hold, 2, queue, release_b)
    slot_b = queue.get(timeout=10)[0]
    c = _start(_hold, 2, queue, release_c)
    time.sleep(1.0)
    assert queue.empty(), "third process got a slot while both were held"
    release_a.set()
    slot_c = queue.get(timeout=10)[0]
    release_b.set(), release_c.set()
    for p in (a, b, c):
        p.join(10)
    assert {slot_a, slot_b} == {"0", "1"}
    assert slot_c == slot_a


def test_wait_gives_up_after_timeout_naming_the_lock_folder(tmp_path):
    queue, release = CTX.Queue(), CTX.Event()
    holder = _start(_hold, 1, queue, release)
    queue.get(timeout=10)
    t0 = time.monotonic()
    with pytest.raises(LossAblationError, match=r"locks: no free GPU slot among devices 0 \(1 per device\) after 0.5 s"):
        with acquire_gpu_slot(1, timeout=0.5, poll_s=0.05):
            pass
    assert 0.4 < time.monotonic() - t0 < 3
    release.set()
    holder.join(10)


def test_crashed_holder_releases_its_slot():
    parent_end, child_end = CTX.Pipe()
    proc = _start(_crash_holding, 1, child_end)
    assert parent_end.poll(10) and parent_end.recv() == "0"
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    with acquire_gpu_slot(1, timeout=2, poll_s=0.05) as slot:
        assert slot == "0"


def test_exception_in_block_releases_slot_and_restores_env():
    with pytest.raises(ValueError):
        with acquire_gpu_slot(1, timeout=1) as slot:
            assert os.environ[CUDA_ENV] == slot == "0"
            raise ValueError("boom")
    assert CUDA_ENV not in os.environ
    queue, release = CTX.Queue(), CTX.Event()
    proc = _start(_hold, 1, queue, release, timeout=2)  # another process can take it at once
    assert queue.get(timeout=10)[0] == "0"
    release.set()
    proc.join(10)


def test_respects_preset_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv(CUDA_ENV, "3,5")
    queue, release = CTX.Queue(), CTX.Event()
    holder = _start(_hold, 2, queue, release, cuda_env="3,5")
    assert queue.get(timeout=10) == ("3", "3")
    with acquire_gpu_slot(2, timeout=2, poll_s=0.05) as slot:
        assert slot == "5" and os.environ[CUDA_ENV] == "5"
    assert os.environ[CUDA_ENV] == "3,5"
    release.set()
    holder.join(10)


def test_no_op_under_slurm_or_without_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv(CUDA_ENV, "1")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with acquire_gpu_slot(2) as slot:
        assert slot is None and os.environ[CUDA_ENV] == "1"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv(CUDA_ENV)
    with acquire_gpu_slot(0) as slot:
        assert slot is None and CUDA_ENV not in os.environ
    assert not (tmp_path / "locks").exists()


def test_device_count_defaults_to_torch_and_can_be_injected(monkeypatch):
    import torch

    assert device_count() == torch.cuda.device_count()  # no environment switch: torch's own count
    monkeypatch.setenv("LOSSABLATION_FAKE_GPUS", "3")  # the removed test hook must have no effect
    assert device_count() == torch.cuda.device_count()
    monkeypatch.setattr(gpuslots, "device_count", lambda: 3)
    with acquire_gpu_slot(timeout=1) as slot:  # n_devices taken from the injected count
        assert slot == "0"
    queue, release = CTX.Queue(), CTX.Event()
    holder = _start(_hold, None, queue, release, timeout=2)  # forked: inherits the patched count
    assert queue.get(timeout=10) == ("0", "0")
    with acquire_gpu_slot(timeout=1, poll_s=0.05) as slot:
        assert slot == "1"
    release.set()
    holder.join(10)


def test_runs_per_gpu_below_one_is_a_programming_error():
    with pytest.raises(ValueError, match="runs_per_gpu must be >= 1"):
        with acquire_gpu_slot(1, runs_per_gpu=0):
            pass


def test_runs_per_gpu_packs_runs_and_spreads_them_over_gpus_first():
    queue, release = CTX.Queue(), CTX.Event()
    procs = []
    got = []
    for _ in range(4):  # 2 GPUs x 2 runs each: four holders at once
        procs.append(_start(_hold, 2, queue, release, runs_per_gpu=2))
        got.append(queue.get(timeout=10)[0])
    fifth = _start(_hold, 2, queue, release, timeout=1.0, runs_per_gpu=2)
    fifth.join(10)
    outcome = queue.get(timeout=10)
    release.set()
    for p in procs:
        p.join(10)
    assert got[:2] == ["0", "1"], "the first runs go to different GPUs"
    assert sorted(got) == ["0", "0", "1", "1"]
    assert outcome[0] == "error" and "2 per device" in outcome[1]
