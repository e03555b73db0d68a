"""Start-up hook of test subprocesses (see tests/faults/__init__.py): arm the fault named by $LOSSABLATION_FAULT.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one; the tests put
this folder first on ``PYTHONPATH``. Nothing happens unless ``$LOSSABLATION_FAULT`` is set. The patch is applied
to the package module right after that module runs (an import hook), before any other module binds its names,
so the package itself carries no test hooks.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys

FAULT_ENV = "LOSSABLATION_FAULT"
BAD_SPEC_EXIT = 3


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_around_state_write(epoch: int, during: bool):
    """Patch for lossablation.train.state: SIGKILL after (or, ``during``, just before the rename of) the write
    of epoch ``epoch``'s state."""

    def patch(state) -> None:
        save_state, atomic_path = state.save_state, sys.modules["lossablation.io"].atomic_path

        def write_then_die(path, writer) -> None:
            with atomic_path(path) as tmp:   # the real temporary file, complete, never renamed
                writer(tmp)
                _die()

        def faulty_save_state(path, run_state) -> None:
            if run_state["epoch"] == epoch and during:
                state.atomic_write_with = write_then_die
            save_state(path, run_state)
            if run_state["epoch"] == epoch:
                _die()

        state.save_state = faulty_save_state

    return "lossablation.train.state", patch


def _out_of_memory(run_name: str):
    """Patch for lossablation.train.loop: the epoch loop of run ``run_name`` raises a CUDA out-of-memory."""

    def patch(loop) -> None:
        run_epochs = loop.run_epochs

        def faulty_run_epochs(spec):
            if spec.name == run_name:
                import torch

                raise torch.OutOfMemoryError(f"simulated out of memory ({FAULT_ENV}=oom={run_name})")
            return run_epochs(spec)

        loop.run_epochs = faulty_run_epochs

    return "lossablation.train.loop", patch


def _parse(spec: str):
    kind, _, value = spec.partition("=")
    if kind in ("kill_after_state", "kill_during_state_write") and value.isdigit():
        return _kill_around_state_write(int(value), during=kind == "kill_during_state_write")
    if kind == "oom" and "/seed" in value:
        return _out_of_memory(value)
    sys.stderr.write(f"sitecustomize: bad {FAULT_ENV}={spec!r} (kill_after_state=K, kill_during_state_write=K, "
                     "oom=ARM/seedN)\n")
    sys.stderr.flush()
    os._exit(BAD_SPEC_EXIT)   # sys.exit would surface as a start-up traceback


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds ``module`` with the normal path finder and runs ``patch(module)`` right after the module executes."""

    def __init__(self, module: str, patch) -> None:
        self.module, self.patch = module, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        exec_module, patch = spec.loader.exec_module, self.patch

        def exec_and_patch(module) -> None:
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get(FAULT_ENV):
    sys.meta_path.insert(0, _PatchOnImport(*_parse(os.environ[FAULT_ENV])))
