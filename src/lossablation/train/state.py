"""The run state ``state.pt``: written at every epoch end, read when a killed job is run again.

Format: one header line ``LOSSABLATION-STATE-1 <sha256 of the payload>`` and a ``torch.save`` payload made only
of tensors and plain data (dicts, lists, tuples, strings, numbers, booleans, None). It is read with
``torch.load(weights_only=True)``, which rebuilds exactly those types and nothing else: reading a state file
never runs code from it, whoever wrote it.

What is found in a run folder, and what happens (docs/reliability.md):

- a temporary file of a killed atomic write (``.state.pt.*.tmp``): ours, never complete; deleted;
- ``state.pt`` with our header whose payload does not match its sha256: our file, damaged (our writer renames
  only complete files, so this is a torn copy or a bad disk); nothing in it can be used or needs keeping, so
  the run starts fresh, with a log line;
- ``state.pt`` of this run under another configuration (same run keys, but the protocol, the Stage-1 checkpoint
  or the dataset changed since it was written): ours and harmless, but stale; the run starts fresh with a
  WARNING naming what changed (Snakemake reruns a job whose params changed; the old epochs must not be resumed);
- ``state.pt`` that is not this run's state: no header, a payload that is not plain tensors and data, fields
  missing, or the state of another run (another arm / seed / stage: a copied or misplaced file): REFUSED with
  one line naming the file (LossAblationError). It is neither run nor replaced, and the user decides (delete it
  to start the run fresh).
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from lossablation.errors import LossAblationError
from lossablation.io import atomic_write_with

log = logging.getLogger("lossablation.train.state")

STATE_MAGIC = b"LOSSABLATION-STATE-1 "
RUN_KEYS = ("arm", "seed", "stage")       # which run a state belongs to; the other identity keys say how it was run
STATE_FIELDS = ("identity", "epoch", "model", "optimizer", "scheduler", "rng", "history", "best_epoch", "best_f1",
                "best_state", "bad_epochs", "finished", "status")


def _refuse(path: Path, why: str) -> LossAblationError:
    return LossAblationError(f"{path}: not a resume state of this run ({why}); "
                             "delete it to start the run fresh")


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """Atomically write ``state`` (the fields of ``STATE_FIELDS``) with an embedded sha256 of the payload."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    payload = buf.getvalue()
    header = STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(header)
            handle.write(payload)

    atomic_write_with(path, write)


def load_state(path: Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The state of the run ``identity`` in ``path``; None when there is none or it is damaged (see above).

    Raises LossAblationError (one line naming ``path``) for a file that is not this run's state.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LossAblationError(f"{path}: cannot read the resume state ({exc.strerror or exc})") from None
    header, _, payload = data.partition(b"\n")
    if not header.startswith(STATE_MAGIC):
        raise _refuse(path, "no lossablation state header")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(STATE_MAGIC):]:
        log.warning("%s: resume state is damaged (sha256 mismatch); ignoring it and starting fresh", path)
        return None
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever fails here, the file is not ours
        raise _refuse(path, f"payload is not plain tensors and data: {type(exc).__name__}") from None
    if not isinstance(state, dict):
        raise _refuse(path, f"payload is a {type(state).__name__}, not a dict")
    missing = [name for name in STATE_FIELDS if name not in state]
    if missing:
        raise _refuse(path, f"field {missing[0]!r} missing")
    found = state["identity"]
    if not isinstance(found, Mapping) or any(found.get(key) != identity.get(key) for key in RUN_KEYS):
        raise _refuse(path, f"it belongs to another run: {_first_difference(found, identity)}")
    if found != identity:
        log.warning("%s: resume state was written under another configuration (%s); starting the run fresh",
                    path, _first_difference(found, identity))
        return None
    return state


def _first_difference(found: Any, expected: Mapping[str, Any]) -> str:
    if not isinstance(found, Mapping):
        return f"identity is a {type(found).__name__}"
    for key, value in expected.items():
        if found.get(key) != value:
            return f"{key} differs"
    extra = [key for key in found if key not in expected]
    return f"unexpected identity key {extra[0]!r}" if extra else "identity differs"
