"""Shared fixtures of the unit tests: one synthetic cache and one model pair per session.

The pair is built once (``model_pair`` caches it per process anyway) from a
synthetic 8M checkpoint written into a session temporary directory, so no test
touches the user's ``~/.cache/esmfuzz`` and nothing needs the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import settings

from esmfuzz.config import default_profile, hypothesis_settings

REPO = Path(__file__).resolve().parents[1]

SYNTHETIC_8M = "synthetic:esm2_t6_8M_UR50D"


def benchmark(name: str):
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


settings.register_profile("esmfuzz-tests", hypothesis_settings(default_profile()))
settings.load_profile("esmfuzz-tests")
"""The unit tests' own @given tests run under esmfuzz's profile (ci under $CI, else quick),
as its fuzz targets do; esmfuzz's plugin loads no profile for a session."""


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA, which is not available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def esmfuzz_cache(tmp_path_factory):
    """``$ESMFUZZ_CACHE`` pointed at a session temporary directory (restored afterwards)."""
    path = tmp_path_factory.mktemp("esmfuzz-cache")
    saved = os.environ.get("ESMFUZZ_CACHE")
    os.environ["ESMFUZZ_CACHE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("ESMFUZZ_CACHE", None)
    else:
        os.environ["ESMFUZZ_CACHE"] = saved


@pytest.fixture(scope="session")
def esm_cache(tmp_path_factory) -> str:
    """The synthetic checkpoints' cache of the pytest runs that tests start as subprocesses."""
    return os.environ.get("ESMFUZZ_CACHE") or str(tmp_path_factory.mktemp("esmfuzz-cache"))


@pytest.fixture(scope="session")
def run_env(esm_cache) -> dict[str, str]:
    """The environment of those runs: this checkout importable, no ``$CI`` (each run names
    its profile)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "ESMFUZZ_CACHE": esm_cache, "PYTHONPATH": path}
    env.pop("CI", None)
    return env


@pytest.fixture(scope="session")
def pair(esmfuzz_cache):
    """The FP32 reference / FP16 candidate / FP64 oracle of the synthetic 8M model, on the CPU."""
    from esmfuzz.models import model_pair

    return model_pair(SYNTHETIC_8M, device="cpu", dtype="float16")



@pytest.fixture(scope="module")
def one_cpu_thread():
    """One intra-op thread: on a busy 2-core runner, OpenMP spin-waits made forward-heavy
    tests 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
