"""Worker-to-GPU pinning of ``esmfuzz soak --workers N`` (xdist workers ``gw0..``), on a
machine faked to have the GPUs ``CUDA_VISIBLE_DEVICES`` names: every visible device gets
workers, as evenly as the count allows, and explicit or CPU devices are left alone."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from esmfuzz.config import Config
from esmfuzz.plugin import _pinned


@pytest.fixture
def visible(monkeypatch):
    """Fake a CUDA machine whose device count is what ``CUDA_VISIBLE_DEVICES`` lists."""

    def set_visible(devices: str) -> None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", devices)
        count = len([d for d in devices.split(",") if d.strip()])
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return set_visible


@pytest.mark.parametrize(("devices", "workers"), [("0,1", 8), ("0,1", 3), ("2,5,7", 4),
                                                  ("0,1,2,3,4,5,6,7", 16)])
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_workers_cover_every_visible_gpu(visible, devices, workers, device):
    visible(devices)
    gpus = len(devices.split(","))
    placed = Counter(_pinned(Config(device=device), f"gw{i}").device for i in range(workers))
    assert set(placed) == {f"cuda:{i}" for i in range(min(gpus, workers))}
    assert max(placed.values()) - min(placed.values()) <= 1


def test_one_gpu_an_explicit_device_or_no_worker_stay_as_given(visible):
    visible("0")
    assert _pinned(Config(device="cuda"), "gw3").device == "cuda"
    visible("0,1")
    assert _pinned(Config(device="cuda:1"), "gw0").device == "cuda:1"
    assert _pinned(Config(device="cpu"), "gw1").device == "cpu"
    assert _pinned(Config(device="cuda"), None).device == "cuda"
