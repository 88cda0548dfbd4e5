"""Would CUDA graphs make esmfuzz's own forwards cheaper? Eager vs captured, per shape.

For each padded shape (batch x tokens) and dtype, on the real fair-esm model: the eager
forward's wall time and its span on the GPU stream (CUDA events), the time to capture it as
a CUDA graph, the graph's replay time, and whether the replay's outputs equal the eager ones
bit for bit. esmfuzz's packed forward is tried too (float16 and float32); a capture that
fails says why.

    python benchmarks/graphs.py --model synthetic:esm2_t33_650M_UR50D

CUDA only. Each figure is the median (min-max) of --repeats calls.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def _spread(values) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _tokens(batch: int, length: int, alphabet, seed: int) -> torch.Tensor:
    """``batch`` random proteins, the longest ``length`` residues, padded as fair-esm pads."""
    import random

    from esmfuzz.packing import pad

    rng = random.Random(seed)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    lengths = [length] + [rng.randint(max(1, length // 2), length) for _ in range(batch - 1)]
    return pad(["".join(rng.choice(letters) for _ in range(n)) for n in lengths], alphabet)


def padded_body(model, tokens: torch.Tensor, layers: list[int], has_padding: bool) -> dict:
    """fair-esm's ``ESM2.forward`` step by step, its one read-back (``padding_mask.any()``)
    decided by the caller, so that the whole forward can be captured."""
    padding_mask = tokens.eq(model.padding_idx)
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:
        x.masked_fill_((tokens == model.mask_idx).unsqueeze(-1), 0.0)
        src_lengths = (~padding_mask).sum(-1)
        observed = (tokens == model.mask_idx).sum(-1).to(x.dtype) / src_lengths
        x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]
    x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
    wanted = set(layers)
    out = {0: x} if 0 in wanted else {}
    x = x.transpose(0, 1)
    mask = padding_mask if has_padding else None
    for index, layer in enumerate(model.layers, start=1):
        x, _ = layer(x, self_attn_padding_mask=mask, need_head_weights=False)
        if index in wanted:
            out[index] = x.transpose(0, 1)
    x = model.emb_layer_norm_after(x).transpose(0, 1)
    if model.num_layers in wanted:
        out[model.num_layers] = x
    return out


def _timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall ms and GPU ms (events) of ``fn()`` followed by a synchronize."""
    walls, gpus = [], []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
        gpus.append(start.elapsed_time(end))
    return walls, gpus


def capture(fn, *, warmup: int = 2):
    """``(graph, outputs)``: ``fn()`` captured after ``warmup`` eager calls on a side stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph, outputs


def _same(first: dict, second: dict) -> str:
    worst = 0.0
    for key in first:
        a, b = first[key].double(), second[key].double()
        if not torch.equal(first[key], second[key]):
            worst = max(worst, ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item())
    return "identical" if worst == 0.0 else f"differ (max rel {worst:.1e})"


def measure(eager, body, repeats: int) -> str:
    """One row: ``eager()`` timed, then ``body()`` captured, replayed, timed and compared."""
    torch.cuda.reset_peak_memory_stats()
    eager()
    walls, gpus = _timed(eager, repeats)
    expected = eager()
    start = time.perf_counter()
    try:
        graph, outputs = capture(body)
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, never stops
        return f"capture failed: {type(exc).__name__}: {str(exc)[:200]}"
    torch.cuda.synchronize()
    captured = (time.perf_counter() - start) * 1e3
    replay_walls, _ = _timed(graph.replay, repeats)
    graph.replay()
    peak = torch.cuda.max_memory_allocated() / 2**30
    return (f"{_spread(walls):>18} {_spread(gpus):>18} {captured:>9.0f} "
            f"{_spread(replay_walls):>18}  {_same(expected, outputs)}; peak {peak:.1f} GiB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:esm2_t33_650M_UR50D")
    parser.add_argument("--shapes", nargs="+", default=["1x130", "4x258", "8x130", "2x514",
                                                        "8x514", "2x1024"])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32", "float64"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    from esmfuzz.models.checkpoint import load_model
    from esmfuzz.models.loading import device_copy

    base, alphabet = load_model(args.model)
    print(f"{args.model}, {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"ms per forward, median (min-max) of {args.repeats}")
    print(f"{'dtype':<8} {'shape':<8} {'eager wall':>18} {'eager GPU':>18} {'capture':>9} "
          f"{'graph wall':>18}  replay vs eager")
    inputs = {}
    for shape in args.shapes:
        batch, length = (int(v) for v in shape.split("x"))
        inputs[shape] = _tokens(batch, length - 2, alphabet, seed=batch * 7919 + length)
    for dtype_name in args.dtypes:
        model = device_copy(base, "cuda", getattr(torch, dtype_name))
        for shape, tokens in inputs.items():
            print(f"{dtype_name:<8} {shape:<8} {_padded_row(model, tokens, args.repeats)}")
        if model.embed_tokens.weight.dtype != torch.float64:
            for shape, tokens in inputs.items():
                print(f"packed {dtype_name:<8} {shape:<8} "
                      f"{_packed_row(model, alphabet, tokens, args.repeats)}")
        del model
        torch.cuda.empty_cache()


def _layers(model) -> list[int]:
    return sorted({0, model.num_layers // 2, model.num_layers})


def _padded_row(model, tokens: torch.Tensor, repeats: int) -> str:
    """fair-esm's padded forward (the oracle's, with its float64 softmax, in float64)."""
    from esmfuzz.forward import _float64_softmax

    tokens, layers = tokens.to("cuda"), _layers(model)
    has_padding = bool(tokens.eq(model.padding_idx).any())
    static = tokens.clone()
    float64 = model.embed_tokens.weight.dtype == torch.float64
    with torch.inference_mode(), (_float64_softmax() if float64 else contextlib.nullcontext()):
        return measure(lambda: model(tokens, repr_layers=layers)["representations"],
                       lambda: padded_body(model, static, layers, has_padding), repeats)


def _packed_row(model, alphabet, tokens: torch.Tensor, repeats: int) -> str:
    """esmfuzz's packed forward, its input check (a read-back) left out of both calls."""
    import esmfuzz.forward as forward_module
    from esmfuzz.packing import pack

    specials = (alphabet.padding_idx, alphabet.cls_idx, alphabet.eos_idx)
    seqs = ["".join(alphabet.get_tok(int(t)) for t in row if int(t) not in specials)
            for row in tokens]
    batch, layers = pack(seqs, alphabet, device="cuda"), _layers(model)

    def forward():
        return forward_module.packed_forward(model, batch.tokens, batch.cu_seqlens,
                                             batch.max_seqlen, layers)

    original = forward_module.check_packed
    forward_module.check_packed = lambda *args: None
    try:
        with torch.inference_mode():
            return measure(forward, forward, repeats)
    finally:
        forward_module.check_packed = original


if __name__ == "__main__":
    main()
