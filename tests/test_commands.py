"""The command layer: CLI options map onto the command functions, errors print as one safe line with one exit
code (CLI and jobs), and the results folder's sweep lock (taking, refusing, recognising stale, unlocking)."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lossablation import commands, sweeplock
from lossablation.cli import _arguments, build_parser
from lossablation.errors import LossAblationError
from lossablation.jobs import run_job

LOSSABLATION = [sys.executable, "-m", "lossablation.cli"]

EXAMPLES = {
    "check-config": ["c.yaml"],
    "describe-data": ["d.npz", "--json"],
    "make-dataset": ["skimage", "--out", "o.npz", "--cq", "20", "--max-frames", "2", "--variants", "orig",
                     "--jobs", "2", "--cpu-used", "6", "--cache", "/tmp/c"],
    "split": ["--config", "c.yaml", "--out", "o"],
    "model-summary": ["--stage1", "s.pt", "--reduction", "2", "--json"],
    "train-stage1": ["--config", "c.yaml", "--out", "o"],
    "features": ["--config", "c.yaml", "--stage1", "s.pt", "--out", "f.pt"],
    "train": ["--config", "c.yaml", "--arm", "a", "--seed", "3", "4", "--stage1", "s.pt", "--out", "o3", "o4",
              "--features", "f.pt"],
    "aggregate": ["--config", "c.yaml", "--runs", "r", "--out", "o"],
    "unlock": ["--results", "r"],
}


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*LOSSABLATION, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_every_subcommand_calls_its_command_with_every_option():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(EXAMPLES)
    for name, argv in EXAMPLES.items():
        args = build_parser().parse_args([name, *argv])
        kwargs = _arguments(args)
        inspect.signature(args.func).bind(**kwargs)  # raises TypeError on a name the command does not take
        assert args.func is getattr(commands, name.replace("-", "_")), name
    train = _arguments(build_parser().parse_args(["train", *EXAMPLES["train"]]))
    assert train == {"config": "c.yaml", "arm": "a", "seed": [3, 4], "stage1": "s.pt", "out": ["o3", "o4"],
                     "features": "f.pt"}


# ------------------------------------------------------------------------------------------- printing
def test_error_line_escapes_control_characters_and_says_each_prefix_once():
    line = commands.error_line("lossablation train: error: ", "config: config: seeds: \x1b[31mred\x1b[0m\nforged")
    assert line == "lossablation train: error: config: seeds: \\x1b[31mred\\x1b[0m\\nforged"
    assert commands.error_line("error: ", LossAblationError("error: x: y")) == "error: x: y"
    assert commands.error_line("error: ", "a: b: a: b") == "error: a: b: a: b"  # only neighbours collapse


def test_cli_error_is_one_escaped_line_with_exit_2(tmp_path):
    name = tmp_path / "evil\x1b[2J\nname.yaml"
    result = run_cli("check-config", name)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr, repr(result.stderr)
    assert result.stderr.startswith("lossablation check-config: error: ")
    assert "evil\\x1b[2J\\nname.yaml" in result.stderr


def _job(log: Path) -> types.SimpleNamespace:
    """What run_job reads of Snakemake's ``snakemake`` object: the job's log, resources and config."""
    return types.SimpleNamespace(log=[str(log)], resources={}, config={"resources": {"runs_per_gpu": 1}})


def test_job_user_error_is_one_escaped_line_in_its_log_with_exit_2(tmp_path):
    log = tmp_path / "logs" / "job.log"
    with pytest.raises(SystemExit) as stop:
        run_job(_job(log), commands.check_config, config=tmp_path / "no\x1b]0;title\x07such.yaml")
    assert stop.value.code == LossAblationError.exit_code == 2
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "\x1b" not in lines[0] and "\x07" not in lines[0] and "no\\x1b]0;title\\x07such.yaml" in lines[0]


def test_job_unexpected_failure_exits_1_with_its_traceback(tmp_path):
    log = tmp_path / "job.log"

    def broken() -> None:
        raise RuntimeError("boom\x1b[0m")

    with pytest.raises(SystemExit) as stop:
        run_job(_job(log), broken)
    assert stop.value.code == 1
    text = log.read_text()
    assert text.startswith("error: job failed: RuntimeError: boom\\x1b[0m\n") and "Traceback" in text


def test_job_log_gets_the_package_log_lines_and_the_setup_is_undone(tmp_path):
    import logging

    log, before = tmp_path / "job.log", list(logging.getLogger().handlers)
    run_job(_job(log), lambda: logging.getLogger("lossablation.train.loop").info("epoch %d done", 3))
    assert log.read_text().split(" ", 1)[1] == "INFO epoch 3 done\n"
    assert logging.getLogger().handlers == before


# ------------------------------------------------------------------------------------------- sweep lock
def _plant_lock(results: Path, **holder) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    data = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": sweeplock._process_start(os.getpid()),
            "started": "2026-01-01T00:00:00+00:00", "cwd": "/somewhere", "token": "t", **holder}
    path = results / sweeplock.LOCK_NAME
    path.write_text(json.dumps(data))
    return path


def test_lock_is_taken_refused_while_held_and_released(tmp_path):
    results = tmp_path / "results"
    assert sweeplock.acquire(results) is None
    held = json.loads((results / sweeplock.LOCK_NAME).read_text())
    assert (held["host"], held["pid"], held["cwd"]) == (socket.gethostname(), os.getpid(), os.getcwd())
    with pytest.raises(LossAblationError, match=f"in use by another sweep .*pid {os.getpid()},"):
        sweeplock.acquire(results)
    assert sweeplock.release(results) and not (results / sweeplock.LOCK_NAME).exists()
    assert not sweeplock.release(results)  # nothing held any more
    assert sorted(p.name for p in results.iterdir()) == [], "no temp files left behind"


def test_stale_lock_of_a_dead_process_on_this_host_is_replaced(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _plant_lock(tmp_path, pid=int(done.stdout), pid_start="1")
    stale = sweeplock.acquire(tmp_path)
    assert stale is not None and stale.pid == int(done.stdout)
    assert json.loads((tmp_path / sweeplock.LOCK_NAME).read_text())["pid"] == os.getpid()
    sweeplock.release(tmp_path)


def test_reused_pid_does_not_keep_a_lock(tmp_path):
    _plant_lock(tmp_path, pid_start="-1")  # our own pid, but a process that started at another time
    assert sweeplock.acquire(tmp_path).pid_start == "-1"
    sweeplock.release(tmp_path)


def test_unlock_refuses_a_live_holder_on_this_host(tmp_path):
    lock = _plant_lock(tmp_path)
    result = run_cli("unlock", "--results", tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"still runs (host {socket.gethostname()}, pid {os.getpid()}," in result.stderr
    assert lock.exists()


def test_lock_of_another_host_holds_until_unlocked(tmp_path):
    lock = _plant_lock(tmp_path, host="node\x1b[1m7", pid=1)
    with pytest.raises(LossAblationError, match=r"host node\\x1b\[1m7, pid 1, .*lossablation unlock --results"):
        sweeplock.acquire(tmp_path)
    result = run_cli("unlock", "--results", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "removed the lock of host node\\x1b[1m7, pid 1" in result.stdout and not lock.exists()
    assert run_cli("unlock", "--results", tmp_path).stdout.endswith("no lock, nothing to do\n")


def test_unreadable_lock_is_refused_then_unlockable(tmp_path):
    (tmp_path / sweeplock.LOCK_NAME).write_text("{not json")
    with pytest.raises(LossAblationError, match="unreadable sweep lock"):
        sweeplock.acquire(tmp_path)
    assert run_cli("unlock", "--results", tmp_path).returncode == 0
    assert sweeplock.acquire(tmp_path) is None
    sweeplock.release(tmp_path)
