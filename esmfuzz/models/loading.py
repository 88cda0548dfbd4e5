"""How the reference, candidate and oracle copies reach the device.

``together``: every copy lives on the device for the whole run. ``sequential``: every copy
lives on the host, and a :class:`Shuttle` brings to the device the one the next forward
needs, evicting the least recently used copies when it would not fit, so that a model
whose copies do not fit together still runs (slowly: each switch moves a copy's weights).
"""

from __future__ import annotations

import copy
import itertools
import time

import torch

from esmfuzz.config import LOADINGS

__all__ = ["LOADINGS", "Shuttle", "device_copy"]



def device_copy(model: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` in ``dtype`` on ``device``, converted one tensor at a time.

    ``copy.deepcopy(model).to(...)`` would first duplicate the whole model on the host: 60 GB
    more for a 15B model in float32. Ties (``lm_head.weight`` is the embedding) are kept.
    """
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        new = tensor.detach().to(
            device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype
        )
        if isinstance(tensor, torch.nn.Parameter):
            new = torch.nn.Parameter(new, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = new
    return copy.deepcopy(model, memo).eval()


class Shuttle:
    """Moves whole copies between the host and the device, least recently used out first.

    Weights are read-only here, so a copy leaves the device by dropping its device tensors:
    the host tensors (pinned on CUDA, for fast transfers) stay as they were.
    """

    def __init__(self, device: torch.device, capacity: int):
        self.device = device
        self.capacity = capacity
        """Bytes of weights the device may hold at once (free memory less the workspace)."""
        self.loads = 0
        self._resident: list[torch.nn.Module] = []
        self._slots: dict[int, list[tuple[dict, str, torch.Tensor]]] = {}

    def host_copy(self, model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """A copy of ``model`` in ``dtype`` kept on the host, brought over by :meth:`ready`."""
        held = device_copy(model, "cpu", dtype)
        pin = self.device.type == "cuda"
        slots, seen = [], set()
        for module in held.modules():
            for table in (module._parameters, module._buffers):
                for name, tensor in table.items():
                    if tensor is None or id(tensor) in seen:
                        continue
                    seen.add(id(tensor))
                    host = tensor.data.pin_memory() if pin else tensor.data
                    if isinstance(tensor, torch.nn.Parameter):
                        tensor.data = host
                    else:
                        table[name] = host
                    slots.append((table, name, host))
        self._slots[id(held)] = slots
        return held

    def nbytes(self, model: torch.nn.Module) -> int:
        return sum(host.nbytes for _, _, host in self._slots[id(model)])

    def resident(self) -> list[torch.nn.Module]:
        """The copies now on the device, least recently used first."""
        return list(self._resident)

    def ready(self, model: torch.nn.Module) -> float:
        """Make ``model``'s weights live on the device before a forward uses them; the
        seconds spent moving weights (0 where they were there)."""
        if id(model) not in self._slots:
            return 0.0
        if model in self._resident:
            self._resident.remove(model)
            self._resident.append(model)
            return 0.0
        start = time.perf_counter()
        need = self.nbytes(model)
        while self._resident and sum(map(self.nbytes, self._resident)) + need > self.capacity:
            self._move(self._resident.pop(0), to_device=False)
        self._move(model, to_device=True)
        self._resident.append(model)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.loads += 1
        return time.perf_counter() - start

    def _move(self, model: torch.nn.Module, *, to_device: bool) -> None:
        for table, name, host in self._slots[id(model)]:
            tensor = host.to(self.device, non_blocking=True, copy=True) if to_device else host
            held = table[name]
            if isinstance(held, torch.nn.Parameter):
                held.data = tensor
            else:
                table[name] = tensor
