"""Installing esmfuzz changes nothing in a pytest session that does not ask for it.

An unrelated project's ``@given`` test runs in a temporary folder, once with esmfuzz's
plugin (installed as a user installs it, into a ``site-packages`` folder, so every session
has it) and once with it blocked (``-p no:esmfuzz``): the same examples, the same
Hypothesis profile, and neither torch nor more of esmfuzz than its option table imported.
Asked for (an ``--esm-*`` option), the plugin starts, and still leaves the unrelated test's
examples and settings alone.

An editable install (``pip install -e``, this checkout's) would not do: Hypothesis draws
on the literal constants of every module it counts as the user's own code, anything
outside ``site-packages``, so that merely importing the plugin module from a checkout
changes the examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

UNRELATED = '''
import json, os, sys
from hypothesis import given, settings, strategies as st

SEEN = []

@given(st.lists(st.integers(), max_size=5))
def test_unrelated(xs):
    SEEN.append(xs)

def test_zz_report():
    light = ("esmfuzz", "esmfuzz.plugin", "esmfuzz.config", "esmfuzz.errors")
    with open(os.environ["QUIET_OUT"], "w") as handle:
        json.dump({"seen": SEEN, "torch": "torch" in sys.modules,
                   "esmfuzz": sorted(m for m in sys.modules
                                     if m.startswith("esmfuzz") and m not in light),
                   "profile": settings._current_profile,
                   "max_examples": settings.default.max_examples}, handle)
'''


def _run(folder, name: str, *options: str, env=None) -> dict:
    out = folder / f"{name}.json"
    env = {**(env or os.environ), "QUIET_OUT": str(out),
           "PYTHONPATH": str(folder.parent / "site-packages")}
    env.pop("CI", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0",
         "--rootdir", str(folder), *options, str(folder / "test_unrelated.py")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory):
    """An unrelated project, beside a ``site-packages`` folder holding esmfuzz (not its
    dependencies: those of this environment serve)."""
    root = tmp_path_factory.mktemp("machine")
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
               "--target", str(root / "site-packages"), str(REPO)]
    done = subprocess.run([*install, "--no-build-isolation"], capture_output=True, text=True)
    if done.returncode:  # no setuptools here: let pip fetch it
        done = subprocess.run(install, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = root / "project"
    folder.mkdir()
    (folder / "test_unrelated.py").write_text(UNRELATED)
    return folder


def test_an_unrelated_session_is_unchanged(unrelated):
    without = _run(unrelated, "without", "-p", "no:esmfuzz")
    installed = _run(unrelated, "installed")
    assert installed == without
    assert not installed["torch"] and installed["esmfuzz"] == []
    assert installed["profile"] == "default" and installed["max_examples"] == 100
    assert len(installed["seen"]) == 100


def test_asked_for_it_starts_and_leaves_other_tests_alone(unrelated, run_env):
    asked = _run(unrelated, "asked", "--esm-device", "cpu", "--esm-profile", "quick",
                 env=run_env)
    assert asked["torch"] and "esmfuzz.session" in asked["esmfuzz"]
    without = _run(unrelated, "without", "-p", "no:esmfuzz")
    assert asked["seen"] == without["seen"] and asked["profile"] == "default"
