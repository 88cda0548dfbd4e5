"""Could esmfuzz's own float32/float64 forwards get faster matmuls without new arithmetic?

At 650M the float32 and float64 forwards are 74-88% matmul, at a third to a half of the
GPU's float64 rate (benchmarks/profile_forwards.py). cuBLAS picks its kernel from the
operands' layout and the library asked; the products and sums stay float32 or float64.
For each dtype, token count and ESM-2 linear shape, this times ``F.linear`` as fair-esm's
``nn.Linear`` calls it against the same product with the weight stored column-major
(``W.t().contiguous().t()``: the same values, the other layout) and through cuBLASLt,
and says whether each gives the same bits. Then whole padded forwards, as is and with every
linear weight column-major.

    python benchmarks/gemm_layouts.py --model synthetic:esm2_t33_650M_UR50D

CUDA only. Each figure is the median (min-max) of --repeats calls, timed with CUDA events.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # graphs.py, beside it

from graphs import _layers, _spread, _tokens  # noqa: E402


def _events(fn, repeats: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _differ(first, second) -> str:
    if torch.equal(first, second):
        return "same bits"
    a, b = first.double(), second.double()
    return f"max rel {((a - b).abs().max() / a.abs().max()).item():.1e}"


@contextlib.contextmanager
def blas(library: str | None):
    """cuBLAS asked for ``library`` within (None: the default, left as it is)."""
    if library is None:
        yield
        return
    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(previous)


def column_major(model):
    """``model`` with every linear weight of its layers stored column-major, in place."""
    for module in model.layers.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = module.weight.data.t().contiguous().t()
    return model


def linears(dtype: torch.dtype, tokens: list[int], shapes: list[tuple[int, int]],
            repeats: int) -> None:
    print(f"\n{'dtype':<8} {'M x K -> N':<18} {'variant':<22} {'ms':>20} {'TFLOP/s':>8}  bits")
    for m in tokens:
        for k, n in shapes:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
            b = torch.randn(n, device="cuda", dtype=dtype)
            w_cm = w.t().contiguous().t()
            expected = F.linear(x, w, b)
            for label, weight, library in (
                ("linear (as fair-esm)", w, None),
                ("W column-major", w_cm, None),
                ("cublasLt", w, "cublaslt"),
            ):
                fn = functools.partial(F.linear, x, weight, b)
                with blas(library):
                    times = _events(fn, repeats)
                    bits = _differ(expected, fn())
                flop = 2 * m * k * n / statistics.median(times) / 1e9
                print(f"{str(dtype)[6:]:<8} {f'{m} x {k} -> {n}':<18} {label:<22} "
                      f"{_spread(times):>20} {flop:>8.1f}  {bits}")


def forwards(model_name: str, dtypes: list[str], shapes: list[str], repeats: int) -> None:
    from esmfuzz.forward import _float64_softmax
    from esmfuzz.models.checkpoint import load_model
    from esmfuzz.models.loading import device_copy

    base, alphabet = load_model(model_name)
    print(f"\nwhole padded forwards, {model_name}: ms, last layer's bits against as-is")
    for dtype_name in dtypes:
        model = device_copy(base, "cuda", getattr(torch, dtype_name))
        layers = _layers(model)
        softmax = _float64_softmax if dtype_name == "float64" else contextlib.nullcontext
        for shape in shapes:
            batch, length = (int(v) for v in shape.split("x"))
            tokens = _tokens(batch, length - 2, alphabet, seed=batch * 7919 + length).cuda()

            def forward(model=model, tokens=tokens, layers=layers):
                return model(tokens, repr_layers=layers)["representations"][layers[-1]]

            with torch.inference_mode(), softmax():
                expected = forward()
                as_is = _events(forward, repeats)
                with blas("cublaslt"):
                    lt = _events(forward, repeats)
                    lt_bits = _differ(expected, forward())
                column_major(model)
                cm = _events(forward, repeats)
                cm_bits = _differ(expected, forward())
                column_major(model)  # back to row-major
            print(f"{dtype_name:<8} {shape:<7} as is {_spread(as_is)}; column-major "
                  f"{_spread(cm)} ({cm_bits}); cublasLt {_spread(lt)} ({lt_bits})")
        del model
        torch.cuda.empty_cache()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:esm2_t33_650M_UR50D")
    parser.add_argument("--tokens", nargs="+", type=int, default=[130, 1040, 4112])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--shapes", nargs="+", default=["2x514", "8x130", "1x130"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"blas {torch.backends.cuda.preferred_blas_library()}")
    for dtype_name in args.dtypes:
        linears(getattr(torch, dtype_name), args.tokens,
                [(1280, 1280), (1280, 5120), (5120, 1280)], args.repeats)
    forwards(args.model, args.dtypes, args.shapes, max(3, args.repeats // 2))


if __name__ == "__main__":
    main()
