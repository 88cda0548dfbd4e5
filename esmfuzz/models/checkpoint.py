"""Safe loading of fair-esm checkpoints, whatever the spec names: hub, local path or synthetic.

A checkpoint is unpickled with ``weights_only`` and a short allow-list, so a file cannot run code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
from pathlib import Path

import torch

from esmfuzz.errors import EsmfuzzError
from esmfuzz.models.spec import ModelSpec, parse_spec
from esmfuzz.models.synthetic import synthetic_checkpoint

_DOWNLOAD = "https://dl.fbaipublicfiles.com/fair-esm"
_SAFE_GLOBALS = [argparse.Namespace]
"""What real ESM-2 checkpoints pickle besides tensors: ``cfg['model']`` is a Namespace."""


class CheckpointError(EsmfuzzError, RuntimeError):
    """A checkpoint file that is missing, corrupt, not fair-esm, or not safe to unpickle."""


@contextlib.contextmanager
def _weights_only():
    """Force ``weights_only`` unpickling with the ESM-2 allow-list, whatever the environment."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)}
    forced = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            yield
    finally:
        if forced is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = forced
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def load_checkpoint(path: Path | str):
    """Load a fair-esm ESM-2 checkpoint safely; return ``(model, alphabet)`` in FP32 on the CPU.

    fair-esm's local loader is ``torch.load`` of the checkpoint and its co-located
    contact regression, then ``load_model_and_alphabet_core``. esmfuzz does the
    two ``torch.load`` calls itself, to force ``weights_only`` with the allow-list
    and to tell a corrupt file from a foreign one, and hands the data to fair-esm's
    core, which builds the real ``ESM2`` and checks every key.
    """
    import esm.pretrained

    path = Path(path)
    regression = Path(str(path.with_suffix("")) + "-contact-regression.pt")
    data = _safe_load(path)
    if not isinstance(data, dict) or "model" not in data or "cfg" not in data:
        keys = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a fair-esm ESM-2 checkpoint: expected top-level "
            f"keys 'cfg' and 'model', found {keys}"
        )
    reg = _safe_load(regression) if regression.is_file() else None
    name = path.stem if path.stem.startswith("esm2") else f"esm2_{path.stem}"
    try:
        with _no_random_init():
            model, alphabet = esm.pretrained.load_model_and_alphabet_core(name, data, reg)
        if reg is None:  # the one table fair-esm lets a file lack
            model.contact_head.regression.reset_parameters()
    except (KeyError, AttributeError, TypeError, RuntimeError) as exc:
        problem = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a fair-esm ESM-2 checkpoint: {problem}"
        ) from None
    return model.eval(), alphabet


@contextlib.contextmanager
def _no_random_init():
    """fair-esm builds ``ESM2`` with random weights, then overwrites every one from the file
    (it checks that no key is missing but the contact regression): the random draws alone
    would take minutes for a 15B model (PyTorch's CPU generator is serial)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}

    def keep(tensor, *args, **kwargs):
        return tensor

    for n in names:
        setattr(torch.nn.init, n, keep)
    try:
        yield
    finally:
        for n, function in saved.items():
            setattr(torch.nn.init, n, function)


def read_state(path: Path | str) -> dict:
    """The weights of a checkpoint by name, memory-mapped: shapes and dtypes, nothing read."""
    path = Path(path)
    data = _safe_load(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a fair-esm ESM-2 checkpoint: "
                              f"no 'model' table of weights")
    return data["model"]


def _safe_load(path: Path):
    """Memory-mapped where the file allows it (zip format, every torch since 1.6): the
    weights are paged in as the model copies them, never held twice on the host."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with _weights_only():
            try:
                return torch.load(str(path), map_location="cpu", mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(str(path), map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not found:
            raise CheckpointError(f"checkpoint {str(path)!r} is not a torch checkpoint") from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} needs {found.group(1)} to unpickle, which is not on "
            f"esmfuzz's allow-list ({_allowed()}); esmfuzz will not run arbitrary code from "
            f"a checkpoint"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _allowed() -> str:
    return ", ".join(f"{g.__module__}.{g.__qualname__}" for g in _SAFE_GLOBALS)


def _hub_checkpoint(name: str) -> Path:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    model_path = folder / f"{name}.pt"
    for url, target in (
        (f"{_DOWNLOAD}/models/{name}.pt", model_path),
        (
            f"{_DOWNLOAD}/regression/{name}-contact-regression.pt",
            folder / f"{name}-contact-regression.pt",
        ),
    ):
        if target.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except Exception as exc:
            raise CheckpointError(
                f"model {name!r} is not in the torch hub cache ({target}) and could not be "
                f"downloaded from {url}: {exc}. Place the file there, or pass a local path."
            ) from None
    return model_path


def checkpoint_path(spec: ModelSpec) -> Path:
    if spec.kind == "synthetic":
        return synthetic_checkpoint(spec.name, spec.seed, spec.profile)
    if spec.kind == "hub":
        return _hub_checkpoint(spec.name)
    return spec.path


def load_model(spec: str | ModelSpec):
    """``(model, alphabet)`` for a spec, FP32 on the CPU, through fair-esm's loader."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    return load_checkpoint(checkpoint_path(spec))
