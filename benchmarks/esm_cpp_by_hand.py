"""esm.cpp's findings checked by hand, without esmfuzz's oracles: fair-esm's own forward
(float64) and esm.cpp's own calls, on fixed inputs. docs/findings.md quotes its output.

    python benchmarks/esm_cpp_by_hand.py            # needs esmfuzz[esm-cpp]

1. The padded path attends its padding: a short sequence padded to a longer one's length,
   its padding masked, against the same sequence alone (float32, every ISA).
2. INT8 packs depend on their neighbours: a sequence in a pack of two against the same
   sequence in a pack of its own (which equals ``forward``), per ISA.
3. The GELU of the float32 kernels near -13.3: a one-layer probe whose FFN units take
   their input from the bias alone, per ISA.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from esmfuzz.adapters import esm_cpp as adapter
from esmfuzz.models import load_model

RANDOM = "synthetic:esm2_t6_8M_UR50D?profile=random"
ISAS = [isa for isa in ("avx2", "avx512", "amx")
        if isa == "avx2" or adapter.esm_cpp.host_isa() in (isa, "amx")]


def _ids(sequence: str) -> np.ndarray:
    return np.asarray(adapter.esm_cpp.Tokenizer().encode(sequence), dtype=np.int32)


def padding(model) -> None:
    engine = adapter.engine(model)
    short, long = _ids("LLAGCW"), _ids("MKTAYIAKQRQISFVKSHFSRQ")
    padded = np.full(len(long), model.padding_idx, np.int32)
    padded[: len(short)] = short
    mask = (np.arange(len(long)) < len(short)).astype(np.int32)
    with torch.no_grad():
        want = model.double()(torch.from_numpy(short[None].astype(np.int64)))["logits"][0]
    model.float()
    want_ = want.numpy()
    alone = engine.forward(short)
    among = engine.forward(padded, mask)[: len(short)]
    print(f"  padded, masked: max |logit - fair-esm float64| {np.abs(among - want_).max():.3g}"
          f"; alone: {np.abs(alone - want_).max():.3g}; logits up to "
          f"{float(want.abs().max()):.3g}")


def packs(model) -> None:
    engine = adapter.engine(model, "int8")
    first, other = _ids("MKTAYIAKQRQISFVKSHFSRQ"), _ids("LLLLAGCW")
    pair = engine.forward_packed(np.concatenate([first, other]),
                                 np.array([0, len(first), len(first) + len(other)], np.int32))
    own = engine.forward_packed(first, np.array([0, len(first)], np.int32))[0]
    print(f"  INT8, the same sequence packed with another vs alone: max |logit drift| "
          f"{np.abs(pair[0] - own).max():.3g}; one-sequence pack vs forward: "
          f"{np.abs(own - engine.forward(first)).max():.3g}")


def gelu(model) -> None:
    from safetensors.torch import load_file, save_file

    engine = adapter._ENGINES.get(model, "float32", lambda: adapter._Engine(model, "float32"))
    folder = engine._folder.name
    state = load_file(os.path.join(folder, "model.safetensors"))
    prefix = "esm.encoder.layer.0."
    bad = []
    for x in np.round(np.arange(-13.5, -13.1, 0.005), 3):
        probe = dict(state)
        probe[prefix + "intermediate.dense.weight"] = torch.zeros_like(
            state[prefix + "intermediate.dense.weight"])
        bias = torch.ones_like(state[prefix + "intermediate.dense.bias"])
        bias[0] = float(x)
        probe[prefix + "intermediate.dense.bias"] = bias
        probe[prefix + "output.dense.weight"] = torch.zeros_like(
            state[prefix + "output.dense.weight"])
        path = os.path.join(folder, "probe.safetensors")
        save_file({k: v.clone().contiguous() for k, v in probe.items()}, path)
        out = adapter.esm_cpp.Model.load_from_safetensors(path).forward_with_hidden_states(
            _ids("KALW"))[1][1]
        if not np.isfinite(out).all():
            bad.append(float(x))
    window = f"[{min(bad)}, {max(bad)}]" if bad else "none"
    print(f"  float32 GELU inputs in -13.5..-13.1 (step 0.005) with a non-finite layer output: "
          f"{len(bad)}, {window}")


def main() -> None:
    model, _ = load_model(RANDOM)
    model.eval()
    print(f"esm-cpp {adapter.esm_cpp.__version__}, host ISA {adapter.esm_cpp.host_isa()}, "
          f"model {RANDOM}")
    for isa in ISAS:
        os.environ["ESM_FORCE_ISA"] = isa
        print(f"ESM_FORCE_ISA={isa}")
        padding(model)
        packs(model)
        gelu(model)


if __name__ == "__main__":
    main()
