"""One sweep per results folder: a lock file in the results folder itself.

``<results>/.lossablation.lock`` is one JSON object naming its holder: host, pid, the pid's start time (so a
reused pid is not mistaken for the holder), start time, working directory and a random token. The Snakefile
takes it in ``onstart:`` and gives it back in ``onsuccess:`` / ``onerror:`` (and at interpreter exit). Snakemake
calls those hooks in its main process for real runs only: ``snakemake -n`` and the job processes (started with
``--no-hooks``) never touch the lock, so a dry run works while a sweep runs and no job meets its own sweep's lock.
Snakemake's own lock (``.snakemake/locks``) only covers one working directory; this one covers every working
directory and host that sees the results folder.

A lock whose holder is provably gone (same host, and its pid no longer runs or now belongs to a younger process)
is stale: the next sweep replaces it and says so. A holder on another host cannot be checked from here, so that
lock holds until ``lossablation unlock --results DIR`` removes it (which refuses while the holder runs on this host).
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from lossablation.errors import LossAblationError, safe_text

LOCK_NAME = ".lossablation.lock"
_held: dict[Path, str] = {}  # lock file -> token, for the locks this process holds


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_start: str | None
    started: str
    cwd: str
    token: str

    def describe(self) -> str:
        return safe_text(f"host {self.host}, pid {self.pid}, started {self.started}, working directory {self.cwd}")


def lock_file(results: str | os.PathLike) -> Path:
    return Path(results).absolute() / LOCK_NAME


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux /proc), "zombie" for a dead unreaped process,
    None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return "zombie" if fields[0] == "Z" else fields[19]


def _runs(pid: int, pid_start: str | None) -> bool:
    """Whether ``pid`` still names the process that took the lock (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _process_start(pid)
    if now == "zombie":
        return False
    return now is None or pid_start is None or now == pid_start


def holder_is_gone(holder: Holder) -> bool:
    """True only when provably gone: on this host and its process no longer runs. Other hosts: False."""
    return holder.host == socket.gethostname() and not _runs(holder.pid, holder.pid_start)


def read_holder(path: Path) -> Holder | None:
    """The holder written in ``path``, None if there is no lock; a lock that cannot be read is refused."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(host=str(data["host"]), pid=int(data["pid"]), pid_start=data.get("pid_start"),
                      started=str(data["started"]), cwd=str(data["cwd"]), token=str(data["token"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LossAblationError(f"{path}: unreadable sweep lock ({type(exc).__name__}); if no sweep uses this results "
                                f"folder, remove it with `lossablation unlock --results {path.parent}`") from None


def _busy(path: Path, holder: Holder) -> LossAblationError:
    return LossAblationError(f"{path.parent}: results folder in use by another sweep ({holder.describe()}); "
                             f"wait for it, or if it is gone run `lossablation unlock --results {path.parent}`")


def _write_new(path: Path, me: Holder) -> bool:
    """Create ``path`` holding ``me`` atomically (complete or absent); False if a lock is already there."""
    tmp = path.with_name(f"{LOCK_NAME}.{me.token}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(me)) + "\n", encoding="utf-8")
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise LossAblationError(f"{path}: cannot write the sweep lock ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _remove_if_still(path: Path, holder: Holder) -> None:
    """Remove the lock only if it is still ``holder``'s: move it aside first, put back a newer one."""
    aside = path.with_name(f"{LOCK_NAME}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if read_holder(aside) != holder:
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
    except LossAblationError:
        pass
    finally:
        aside.unlink()


def acquire(results: str | os.PathLike) -> Holder | None:
    """Take the lock of ``results`` (created if missing) for this process; released at exit at the latest.

    Returns the stale holder it replaced, if any; raises LossAblationError (one line) when the folder is held.
    """
    path = lock_file(results)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LossAblationError(f"{path.parent}: cannot create the results folder ({exc.strerror or exc})") from None
    pid = os.getpid()
    me = Holder(host=socket.gethostname(), pid=pid, pid_start=_process_start(pid),
                started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), cwd=os.getcwd(),
                token=uuid.uuid4().hex)
    stale = None
    for _ in range(5):  # a few rounds: another sweep may take or clear the lock between our steps
        if _write_new(path, me):
            _held[path] = me.token
            atexit.register(release, results)
            return stale
        holder = read_holder(path)
        if holder is None:
            continue
        if not holder_is_gone(holder):
            raise _busy(path, holder)
        _remove_if_still(path, holder)
        stale = holder
    raise LossAblationError(f"{path}: could not take the sweep lock (other sweeps keep taking it)")


def release(results: str | os.PathLike) -> bool:
    """Remove the lock of ``results`` if this process holds it; True if it did."""
    path = lock_file(results)
    token = _held.pop(path, None)
    if token is None:
        return False
    try:
        holder = read_holder(path)
    except LossAblationError:
        return False
    if holder is None or holder.token != token:
        return False
    _remove_if_still(path, holder)
    return True


def unlock(results: str | os.PathLike) -> str | None:
    """Remove the lock of ``results`` left by a sweep that is gone; returns who held it (None: no lock).

    Refused while the holder still runs on this host. A holder on another host is taken at the user's word.
    """
    path = lock_file(results)
    try:
        holder = read_holder(path)
    except LossAblationError:
        path.unlink(missing_ok=True)  # unreadable: the user asked to remove it
        return "an unreadable lock"
    if holder is None:
        return None
    if not holder_is_gone(holder) and holder.host == socket.gethostname():
        raise LossAblationError(f"{path.parent}: the sweep holding this results folder still runs "
                                f"({holder.describe()}); stop it first")
    _remove_if_still(path, holder)
    return holder.describe()
