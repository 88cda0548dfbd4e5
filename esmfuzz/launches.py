"""Counts the device operations a check runs, by phase: a measure of launch overhead that
does not depend on the device.

On a GPU, small packs make esmfuzz launch-bound: a forward is dozens of kernels per layer
and Python launches them more slowly than the GPU runs them, so examples/s follows the
number of kernels an example launches. Almost every ATen operation that computes is one
kernel on CUDA; views and other metadata-only operations launch nothing. Counting them
on the CPU predicts what a change saves on the GPU before a GPU is at hand; read-backs
(``.item()``, ``.tolist()``, copies to the host) are counted apart, as each one stalls the
launching thread until the device catches up.

Set ``ESMFUZZ_TIMINGS=launches`` for a run (``benchmarks/throughput.py --launches``);
the counts then go into the run log's phases beside the timings. Counting costs a Python
call per operation: read the counts of such a run, not its speed.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LaunchCounter"]

_READ_BACKS = {"_local_scalar_dense", "equal"}


def _storages(value) -> set[int]:
    if isinstance(value, torch.Tensor):
        try:
            return {value.untyped_storage().data_ptr()} if value.numel() else set()
        except (RuntimeError, NotImplementedError):
            return set()
    if isinstance(value, (list, tuple)):
        return set().union(*map(_storages, value)) if value else set()
    return set()


class LaunchCounter(TorchDispatchMode):
    """Adds ``launches <phase>`` and ``read-backs <phase>`` to ``counts`` for each ATen
    operation run while it is active; :meth:`phase` names the phase of the ones inside."""

    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts
        self.current = "checks"

    @contextlib.contextmanager
    def phase(self, name: str):
        outer, self.current = self.current, name
        try:
            yield
        finally:
            self.current = outer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in _READ_BACKS or (
            name == "_to_copy" and isinstance(out, torch.Tensor) and out.device.type == "cpu"
            and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)
        ):
            self.counts[f"read-backs {self.current}"] += 1
        elif not self._metadata_only(func, args, kwargs, out):
            self.counts[f"launches {self.current}"] += 1
        return out

    @staticmethod
    def _metadata_only(func, args, kwargs, out) -> bool:
        """A view (its output shares an input's storage and the schema writes nothing), an
        empty allocation, or an operation on empty tensors."""
        schema = func._schema
        if func.overloadpacket.__name__ in ("empty", "empty_like", "empty_strided"):
            return True
        if any(r.alias_info is not None and r.alias_info.is_write for r in schema.returns):
            return False
        produced = _storages(out)
        if not produced:
            return True
        return produced <= _storages(list(args) + list(kwargs.values()))
