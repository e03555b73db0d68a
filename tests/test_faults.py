"""The fault injection of tests/faults reaches the processes the reliability tests kill: the venv's Python
running the CLI, and the Python of a Snakemake ``script:`` job. A fault that cannot fire fails loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from faults import BAD_SPEC_EXIT, FAULT_ENV, FAULTS_DIR, fault_env

PROBE = """
import sys
site = sys.modules.get("sitecustomize")
armed = [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_PatchOnImport"]
report = f"{getattr(site, '__file__', None)} {armed}"
"""


def test_sitecustomize_is_loaded_and_armed_in_a_subprocess():
    out = subprocess.run([sys.executable, "-c", PROBE + "print(report)"], env=fault_env("kill_after_state=2"),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{FAULTS_DIR / 'sitecustomize.py'} ['_PatchOnImport']"
    unarmed = subprocess.run([sys.executable, "-c", PROBE + "print(report)"], env=fault_env(None),
                             capture_output=True, text=True, check=True).stdout
    assert "_PatchOnImport" not in unarmed and str(FAULTS_DIR) not in unarmed


def test_the_patch_lands_on_the_package_module():
    check = ("import lossablation.train.loop as loop, lossablation.train.stage2 as stage2; "
             "print(loop.run_epochs.__name__, stage2.run_epochs is loop.run_epochs)")
    out = subprocess.run([sys.executable, "-c", check], env=fault_env("oom=poly/seed2"), capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["faulty_run_epochs", "True"]


def test_a_malformed_fault_stops_the_process():
    proc = subprocess.run([sys.executable, "-c", "print('ran')"], env=fault_env("kill_after_epoch=2"),
                          capture_output=True, text=True)
    assert proc.returncode == BAD_SPEC_EXIT and "ran" not in proc.stdout
    assert FAULT_ENV in proc.stderr


def test_sitecustomize_is_loaded_in_a_snakemake_script_job(tmp_path: Path):
    (tmp_path / "probe.py").write_text(PROBE + "open(snakemake.output[0], 'w').write(report)\n")
    (tmp_path / "Snakefile").write_text('rule probe:\n    output: "probe.txt"\n    script: "probe.py"\n')
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--quiet"], cwd=tmp_path,
                          env=fault_env("oom=poly/seed2"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "probe.txt").read_text() == f"{FAULTS_DIR / 'sitecustomize.py'} ['_PatchOnImport']"
