"""Where a forward's GPU time goes: kernel time by kind, beside the bare matmuls' time.

For each padded shape (batch x tokens) and dtype, on the real fair-esm model: the CUDA
kernel time of one forward (fair-esm's padded forward; in float64 the oracle's, with its
float64 softmax; esmfuzz's packed forward too where ``--packed``), split by kind of kernel
(matmul, softmax, layer norm, elementwise, copies, reductions, the rest), and the time of
the same forward's linear layers alone (every ``nn.Linear`` of every layer, called on
tensors of the forward's token count): how far the forward lies from its matmul floor.

    python benchmarks/profile_forwards.py --model synthetic:esm2_t33_650M_UR50D

CUDA only. Kernel times are the median of --repeats profiled calls.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import re
import statistics
import sys
import time
from pathlib import Path

import torch

_KINDS = (
    ("matmul", re.compile(r"gemm|Gemm|GEMM|cutlass|xmma|sm90_|nvjet|dot_kernel", re.I)),
    ("softmax", re.compile(r"softmax", re.I)),
    ("layer norm", re.compile(r"layer_norm|LayerNorm", re.I)),
    ("copy", re.compile(r"copy|cat_|CatArray|transpose|contiguous", re.I)),
    ("reduce", re.compile(r"reduce", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|gelu|erf|masked_fill", re.I)),
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # graphs.py, beside it


def kind_of(kernel: str) -> str:
    return next((kind for kind, pattern in _KINDS if pattern.search(kernel)), "other")


def kernel_times(fn, repeats: int, device: str = "cuda"):
    """Median ms per kind of kernel over ``repeats`` profiled calls of ``fn()``, the kernel
    count of one call, and the 8 costliest kernels (median ms). On the CPU (a dry run of
    this script) the operators stand in for kernels, nested ones counted twice."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    wanted = (torch.autograd.DeviceType.CUDA if device == "cuda"
              else torch.autograd.DeviceType.CPU)

    per_kind: dict[str, list[float]] = collections.defaultdict(list)
    per_name: dict[str, list[float]] = collections.defaultdict(list)
    counts = []
    for _ in range(repeats):
        _sync(device)
        with profile(activities=[activity]) as prof:
            fn()
            _sync(device)
        kinds, names, count = collections.Counter(), collections.Counter(), 0
        for event in prof.events():
            if event.device_type != wanted:
                continue
            ms = event.time_range.elapsed_us() / 1e3
            kinds[kind_of(event.name)] += ms
            names[event.name[:90]] += ms
            count += 1
        for kind in [k for k, _ in _KINDS] + ["other"]:
            per_kind[kind].append(kinds[kind])
        for name, ms in names.items():
            per_name[name].append(ms)
        counts.append(count)
    medians = {kind: statistics.median(v) for kind, v in per_kind.items()}
    top = sorted(((n, statistics.median(v)) for n, v in per_name.items()),
                 key=lambda item: -item[1])[:8]
    return medians, int(statistics.median(counts)), top


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def linear_floor(model, tokens: int, repeats: int) -> float:
    """Median ms of every ``nn.Linear`` of the forward, one call each on [tokens, in]."""
    linears = [m for m in model.layers.modules() if isinstance(m, torch.nn.Linear)]
    device = str(linears[0].weight.device.type)
    inputs = {m.in_features: torch.randn(tokens, m.in_features, device=device,
                                         dtype=m.weight.dtype) for m in linears}
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            for m in linears:
                m(inputs[m.in_features])
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def _report(label: str, kinds: dict[str, float], count: int, floor: float, tflop: float,
            top) -> None:
    total = sum(kinds.values())
    split = ", ".join(f"{k} {v:.1f} ({v / total:.0%})" for k, v in kinds.items() if v)
    print(f"{label}: kernels {total:.1f} ms in {count} launches ({tflop / total * 1e3:.1f} "
          f"TFLOP/s of linear work); linear floor {floor:.1f} ms "
          f"({tflop / floor * 1e3:.1f} TFLOP/s)\n    {split}")
    for name, ms in top:
        print(f"      {ms:7.2f} ms  {name}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:esm2_t33_650M_UR50D")
    parser.add_argument("--shapes", nargs="+", default=["2x514", "8x130", "1x130"])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32", "float64"])
    parser.add_argument("--packed", action="store_true", help="esmfuzz's packed forward too")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    args = parser.parse_args(argv)

    from graphs import _layers, _tokens

    from esmfuzz.forward import _float64_softmax, packed_forward
    from esmfuzz.models.checkpoint import load_model
    from esmfuzz.models.loading import device_copy
    from esmfuzz.packing import pack

    base, alphabet = load_model(args.model)
    device = args.device
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{args.model}, {name}, torch {torch.__version__}; "
          f"kernel ms per forward, median of {args.repeats}")
    params = sum(m.weight.numel() for m in base.layers.modules()
                 if isinstance(m, torch.nn.Linear))
    specials = (alphabet.padding_idx, alphabet.cls_idx, alphabet.eos_idx)
    for dtype_name in args.dtypes:
        model = device_copy(base, device, getattr(torch, dtype_name))
        float64 = dtype_name == "float64"
        for shape in args.shapes:
            batch, length = (int(v) for v in shape.split("x"))
            tokens = _tokens(batch, length - 2, alphabet, seed=batch * 7919 + length).to(device)
            layers = _layers(model)
            real = int(tokens.ne(alphabet.padding_idx).sum())
            floor = linear_floor(model, batch * length, args.repeats)
            with torch.inference_mode(), (_float64_softmax() if float64
                                          else contextlib.nullcontext()):
                forward = functools.partial(model, tokens, repr_layers=layers)
                forward()
                kinds, count, top = kernel_times(forward, args.repeats, device)
                _report(f"{dtype_name} padded {shape}", kinds, count, floor,
                        2 * params * batch * length / 1e12, top)
                if args.packed and not float64:
                    seqs = ["".join(alphabet.get_tok(int(t)) for t in row
                                    if int(t) not in specials) for row in tokens]
                    b = pack(seqs, alphabet, device=device)
                    packed = functools.partial(packed_forward, model, b.tokens,
                                               b.cu_seqlens, b.max_seqlen, layers)
                    packed()
                    kinds, count, top = kernel_times(packed, args.repeats, device)
                    _report(f"{dtype_name} packed {shape} ({real} tokens)", kinds, count,
                            linear_floor(model, real, args.repeats),
                            2 * params * real / 1e12, top)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
