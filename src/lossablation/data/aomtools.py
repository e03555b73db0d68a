"""The libaom tools make-dataset needs: Debian's ``aomenc``, and libaom's ``inspect`` example built once.

``inspect`` (``examples/inspect.c``) prints a decoded stream's block-size map; Debian does not ship it, so
:func:`prepare_tools` builds it from Debian's own ``aom`` source package with ``CONFIG_INSPECTION=1`` into a cache
folder (about a minute, once). Missing Debian packages are installed with ``apt-get`` (which needs root); the
source is fetched through a private apt configuration, so the system's apt sources are never edited. The cache
is locked while it is prepared: parallel callers wait, and a second call does no work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from lossablation.errors import LossAblationError
from lossablation.io import atomic_path, atomic_write_json, sha256_file

APT_PACKAGES = ("aom-tools", "yasm", "nasm", "ninja-build", "cmake", "dpkg-dev")
_PKG_BINARY = {"aom-tools": "aomenc", "yasm": "yasm", "nasm": "nasm", "ninja-build": "ninja", "cmake": "cmake",
               "dpkg-dev": "dpkg-source"}
INSPECT_CMAKE_FLAGS = ("-DCONFIG_INSPECTION=1", "-DCONFIG_AV1_ENCODER=0", "-DCONFIG_LIBYUV=0", "-DENABLE_TESTS=0",
                       "-DENABLE_DOCS=0", "-DENABLE_TOOLS=0", "-DENABLE_EXAMPLES=1", "-DCMAKE_BUILD_TYPE=Release")
AOM_SOURCE = "aom/bookworm"


@dataclass(frozen=True)
class Tools:
    """Paths of the prepared tools, and how they were made (``tools.json`` plus the aomenc version)."""

    aomenc: Path
    inspect: Path
    info: dict = field(default_factory=dict)


def run_tool(cmd: Sequence[str], what: str, cwd: str | os.PathLike | None = None, log=None) -> str:
    """Run an external tool; its stdout, or LossAblationError with ``what`` and the last lines of its output."""
    if log:
        log("$ " + " ".join(str(c) for c in cmd))
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise LossAblationError(f"{what}: cannot run {cmd[0]}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LossAblationError(f"{what}: {Path(str(cmd[0])).name} failed (exit {proc.returncode}): "
                                + " | ".join(tail))
    return proc.stdout


def _apt_install(packages: Sequence[str], log) -> None:
    """apt-get install the missing packages (root needed); refresh the lists once if the first try fails."""
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise LossAblationError(f"tools: need the Debian packages {' '.join(packages)} and there is no apt-get")
    if os.geteuid() != 0:
        raise LossAblationError(f"tools: install the Debian packages {' '.join(packages)} (apt-get needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    log("$ " + " ".join(cmd))
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        run_tool(["apt-get", "update"], "tools: apt-get update", log=log)
        run_tool(cmd, "tools: apt-get install", log=log)


def _private_apt_options(apt_dir: Path) -> list[str]:
    """A private apt config with deb-src lines (the system's sources are never edited)."""
    parts = apt_dir / "parts"
    for sub in (parts, apt_dir / "lists" / "partial", apt_dir / "cache" / "archives" / "partial"):
        sub.mkdir(parents=True, exist_ok=True)
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        text = sources.read_text()
        (parts / "src.sources").write_text(
            "\n".join("Types: deb-src" if line.strip() == "Types: deb" else line for line in text.splitlines())
            + "\n")
    else:
        (parts / "src.list").write_text("deb-src http://deb.debian.org/debian bookworm main\n")
    return ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", f"Dir::State::Lists={apt_dir / 'lists'}", "-o", f"Dir::Cache={apt_dir / 'cache'}"]


def _build_inspect(cache: Path, log) -> Path:
    """Fetch Debian's aom source, build only the ``inspect`` example into ``cache/bin``, record how in tools.json."""
    work = cache / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    opts = _private_apt_options(work / "apt")
    run_tool(["apt-get", *opts, "update"], "tools: apt-get update (deb-src)", log=log)
    download = work / "download"
    download.mkdir()
    run_tool(["apt-get", *opts, "source", "--download-only", AOM_SOURCE], "tools: apt-get source aom",
             cwd=download, log=log)
    dsc = sorted(download.glob("aom_*.dsc"))
    if not dsc:
        raise LossAblationError(f"tools: {download}: no aom_*.dsc downloaded")
    src = work / "src"
    run_tool(["dpkg-source", "-x", dsc[0].name, str(src)], "tools: dpkg-source -x", cwd=download, log=log)
    build = work / "build"
    run_tool(["cmake", "-G", "Ninja", "-S", src, "-B", build, *INSPECT_CMAKE_FLAGS], "tools: cmake (inspect)",
             log=log)
    run_tool(["ninja", "-C", build, "inspect"], "tools: ninja inspect", log=log)
    target = cache / "bin" / "inspect"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copy2(build / "examples" / "inspect" if (build / "examples" / "inspect").exists()
                     else build / "inspect", tmp)
    target.chmod(0o755)
    atomic_write_json(cache / "tools.json", {"aom_source": dsc[0].name, "cmake_flags": list(INSPECT_CMAKE_FLAGS),
                                             "inspect_sha256": sha256_file(target)})
    shutil.rmtree(work)
    return target


def aomenc_version(aomenc: Path) -> str:
    """The version aomenc prints in its --help (recorded in the npz's encoder settings)."""
    out = subprocess.run([str(aomenc), "--help"], capture_output=True, text=True)
    for line in (out.stdout + out.stderr).splitlines():
        if "av1" in line and "Encoder" in line:
            return line.split("Encoder", 1)[1].strip()
    return "unknown"


def prepare_tools(cache_dir: str | os.PathLike, log: Callable[[str], None] | None = None) -> Tools:
    """Make ``aomenc`` and ``inspect`` available; idempotent (a second call does no work), safe across processes."""
    from filelock import FileLock

    log = log or (lambda msg: print(msg, file=sys.stderr))
    cache = Path(cache_dir).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    inspect = cache / "bin" / "inspect"
    with FileLock(str(cache / ".prepare.lock")):
        need = ["aom-tools"] if shutil.which("aomenc") is None else []
        if not inspect.exists():
            need += [p for p in APT_PACKAGES[1:] if shutil.which(_PKG_BINARY[p]) is None]
        _apt_install(need, log)
        if not inspect.exists():
            log(f"building libaom inspect into {cache} (about a minute)")
            _build_inspect(cache, log)
    aomenc = Path(shutil.which("aomenc") or "aomenc")
    info = json.loads((cache / "tools.json").read_text()) if (cache / "tools.json").exists() else {}
    info["aomenc"] = aomenc_version(aomenc)
    return Tools(aomenc=aomenc, inspect=inspect, info=info)
