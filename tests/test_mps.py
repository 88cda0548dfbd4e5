"""CUDA MPS for workers sharing a GPU (esmfuzz.mps).

The real control daemon needs an NVIDIA driver; here a stand-in on the PATH speaks its
protocol (``-d`` creates the control pipe, ``quit`` on stdin stops it), so the start, the
environment handed to workers, the fallbacks and the clean-up are checked on any machine.
The daemon itself ran on an H100 (docs/performance.md).
"""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esmfuzz.mps import mps_for
from esmfuzz.soak import SoakError, run_soak

_STAND_IN = """#!/bin/sh
echo "$@" >> "$RECORD"
if [ "$1" = "-d" ]; then
    [ -n "$FAIL" ] && { echo "$FAIL" >&2; exit 1; }
    touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0
fi
read line; echo "stdin $line" >> "$RECORD"
"""


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(_STAND_IN)
    control.chmod(control.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "record"
    record.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(record))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("FAIL", raising=False)
    return record


def test_several_per_gpu_get_a_private_daemon_that_quits_at_the_end(daemon):
    with mps_for(4) as sharing:
        pipe = Path(sharing.env["CUDA_MPS_PIPE_DIRECTORY"])
        assert (pipe / "control").exists()
        assert Path(sharing.env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
        assert "private MPS daemon" in sharing.why
        assert daemon.read_text().splitlines() == ["-d"]
    assert daemon.read_text().splitlines() == ["-d", "", "stdin quit"]
    assert not pipe.exists()


def test_the_daemon_quits_when_the_run_fails(daemon):
    with pytest.raises(KeyError), mps_for(2) as sharing:
        pipe = Path(sharing.env["CUDA_MPS_PIPE_DIRECTORY"])
        raise KeyError("a round broke")
    assert daemon.read_text().splitlines()[-1] == "stdin quit"
    assert not pipe.exists()


@pytest.mark.parametrize("per_gpu, mode", [(1, "auto"), (4, "off")])
def test_no_daemon_for_one_process_per_gpu_or_when_off(daemon, per_gpu, mode):
    with mps_for(per_gpu, mode) as sharing:
        assert sharing.env == {}
    assert daemon.read_text() == ""


def test_a_running_daemon_is_used_as_it_is(daemon, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    with mps_for(4) as sharing:
        assert sharing.env == {} and str(tmp_path) in sharing.why
    assert daemon.read_text() == ""


def test_a_daemon_that_cannot_start_falls_back_under_auto_and_fails_under_on(daemon,
                                                                             monkeypatch):
    monkeypatch.setenv("FAIL", "An instance of this daemon is already running")
    with mps_for(4) as sharing:
        assert sharing.env == {}
        assert "already running" in sharing.why and "time-slice" in sharing.why
    with pytest.raises(RuntimeError, match="MPS could not start: An instance"), mps_for(4, "on"):
        pass


def test_no_control_program(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    with mps_for(4) as sharing:
        assert sharing.env == {} and "no nvidia-cuda-mps-control" in sharing.why
    with pytest.raises(RuntimeError, match="not on the PATH"), mps_for(4, "on"):
        pass


def test_bad_modes_are_named(tmp_path):
    with pytest.raises(ValueError, match="mps='always'"), mps_for(4, "always"):
        pass
    with pytest.raises(SoakError, match="--mps 'always'"):
        run_soak(duration="10s", mps="always", run_dir=str(tmp_path / "run"))


def test_the_daemon_quits_when_the_run_is_killed_outright(daemon, tmp_path):
    """SIGKILL runs no ``finally``: the watchdog, seeing its stdin close, quits the daemon."""
    run = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom esmfuzz.mps import mps_for\n"
         "with mps_for(4) as s:\n    print(s.env['CUDA_MPS_PIPE_DIRECTORY'], flush=True)\n"
         "    time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    pipe = Path(run.stdout.readline().strip())
    assert (pipe / "control").exists()
    run.kill()
    run.wait()
    for _ in range(200):
        if not pipe.parent.exists():
            break
        time.sleep(0.05)
    assert daemon.read_text().splitlines() == ["-d", "", "stdin quit"]
    assert not pipe.parent.exists()
