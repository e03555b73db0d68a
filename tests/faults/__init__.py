"""Fault injection for tests that run the real CLI or workflow in subprocesses.

``fault_env(spec)`` returns an environment whose ``PYTHONPATH`` starts with this folder, so every Python process
started with it (the CLI, Snakemake and its jobs) imports ``sitecustomize.py`` from here at start-up; that file
reads ``$LOSSABLATION_FAULT`` (this test helper's variable, unknown to the package) and patches the package as
it is imported. Faults (``spec``):

- ``kill_after_state=K``: SIGKILL right after the run state of epoch K is in place;
- ``kill_during_state_write=K``: SIGKILL with epoch K's state written to its temporary file, before the rename;
- ``oom=ARM/seedN``: ``torch.OutOfMemoryError`` when that run's epoch loop starts.

A malformed spec stops the process at start-up (exit status 3), so a fault that cannot fire fails its test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from faults.sitecustomize import BAD_SPEC_EXIT, FAULT_ENV  # noqa: F401 (inert in this process: nothing armed)

FAULTS_DIR = Path(__file__).resolve().parent


def fault_env(spec: str | None, base: Mapping[str, str] | None = None, *pythonpath: str | os.PathLike) -> dict:
    """``base`` (default: this process's environment) with ``pythonpath`` entries in front of its PYTHONPATH and,
    when ``spec`` is given, the fault armed (this folder first on PYTHONPATH, ``$LOSSABLATION_FAULT`` set)."""
    env = dict(os.environ if base is None else base)
    env.pop(FAULT_ENV, None)
    front = [str(FAULTS_DIR)] if spec else []
    parts = front + [str(p) for p in pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    if spec:
        env[FAULT_ENV] = spec
    return env
