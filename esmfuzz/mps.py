"""CUDA MPS for worker processes that share one GPU.

Without MPS the GPU time-slices between processes: one process's small kernels leave most
of the chip idle and the others wait their turn, so more workers raise "GPU busy" but not
examples/s. Under MPS their kernels run side by side. ``esmfuzz soak`` (and
``benchmarks/throughput.py``) start a private control daemon, with its own pipe directory,
for the length of a run when several workers share a GPU, and quit it at the end; a
daemon already running (the system's, or one named by ``CUDA_MPS_PIPE_DIRECTORY``) is used
as it is. A watchdog process quits the private daemon when the run ends, also when it is
killed outright.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MODES", "Sharing", "mps_for"]

MODES = ("auto", "on", "off")
_SYSTEM_PIPES = Path("/tmp/nvidia-mps")


class Sharing:
    """What the workers get: ``env`` to add to theirs, and ``why`` in words."""

    def __init__(self, env: dict[str, str], why: str):
        self.env = env
        self.why = why


@contextmanager
def mps_for(per_gpu: int, mode: str = "auto"):
    """A :class:`Sharing` for ``per_gpu`` processes on each GPU: under ``auto`` a private MPS
    daemon when ``per_gpu`` > 1 and ``nvidia-cuda-mps-control`` is on the path, else plain
    time-slicing; ``on`` fails where MPS cannot start; ``off`` never starts it."""
    if mode not in MODES:
        raise ValueError(f"mps={mode!r} must be one of {', '.join(MODES)}")
    if mode == "off" or (mode == "auto" and per_gpu <= 1):
        yield Sharing({}, "MPS off" if mode == "off" else "no GPU shared by processes, no MPS")
        return
    running = os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or (
        str(_SYSTEM_PIPES) if (_SYSTEM_PIPES / "control").exists() else None)
    if running:
        yield Sharing({}, f"the MPS daemon already running ({running})")
        return
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        if mode == "on":
            raise RuntimeError("mps='on' but nvidia-cuda-mps-control is not on the PATH")
        yield Sharing({}, "no nvidia-cuda-mps-control: processes time-slice the GPU")
        return
    home = Path(tempfile.mkdtemp(prefix="esmfuzz-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(home / "pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(home / "log")}
    for path in env.values():
        Path(path).mkdir()
    whole = {**os.environ, **env}
    try:
        problem = _start(control, whole, home)
        if problem:
            if mode == "on":
                raise RuntimeError(f"MPS could not start: {problem}")
            yield Sharing({}, f"MPS could not start ({problem}): processes time-slice the GPU")
            return
        watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, control, str(home)],
                                    stdin=subprocess.PIPE, env=whole, start_new_session=True)
        try:
            yield Sharing(env, f"a private MPS daemon ({env['CUDA_MPS_PIPE_DIRECTORY']})")
        finally:
            watchdog.stdin.close()
            try:
                watchdog.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _quit(control, whole)
    finally:
        shutil.rmtree(home, ignore_errors=True)


_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
control, home = sys.argv[1:3]
try:
    subprocess.run([control], input="quit\\n", capture_output=True, text=True, timeout=30)
except (OSError, subprocess.TimeoutExpired):
    pass
shutil.rmtree(home, ignore_errors=True)
"""
"""Quits the daemon once its stdin, held by the run's process alone, reaches end of file:
when the run leaves :func:`mps_for`, or dies, even of SIGKILL. Its own session keeps a
Ctrl-C meant for the run from stopping it first."""


def _start(control: str, env: dict[str, str], home: Path) -> str | None:
    """Start the daemon; ``None`` once its control pipe exists, else what went wrong."""
    try:
        done = subprocess.run([control, "-d"], env=env, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
    pipe = home / "pipe" / "control"
    for _ in range(100):
        if pipe.exists():
            return None
        time.sleep(0.05)
    _quit(control, env)
    return f"no control pipe at {pipe} after 5 s"


def _quit(control: str, env: dict[str, str]) -> None:
    try:
        subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True,
                       timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass
