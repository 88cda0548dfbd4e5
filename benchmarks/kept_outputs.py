"""Tokens each dtype's forwards compute per example, with and without the kept outputs.

:class:`esmfuzz.harness.KeptOutputs` keeps the trusted forwards' outputs (the float64
oracle, fair-esm's padded baseline, the packed reference) across checks by exact batch.
This draws what a soak worker's slice of each fuzz target draws (the soak profile, the
first ``--examples`` of a run, ``--seeds``), checks every sample with two harnesses of
this checkout, one keeping (``KEPT_BYTES``, scaled to hold as many batches as at 650M's
width) and one keeping nothing, and counts the tokens
(padding included) every forward call computed, by dtype. The counts do not depend on the
device's speed; the float32 and float64 tokens are what bounds a 650M soak on a GPU. Both
harnesses must give the same verdicts: it stops if one differs in any recorded value.

    python benchmarks/kept_outputs.py --examples 20 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIX = [("error_ratio", "short"), ("error_ratio", "medium"), ("error_ratio", "long"),
       ("error_ratio", "very_long"), ("error_ratio", "crowded"), ("finite", "long"),
       ("isolation", "mixed"), ("packed_precision", "medium"), ("padding_invariance", "mixed"),
       ("statistics", "mixed")]
"""The soak mix of benchmarks/plans/throughput-23.sh (``error_ratio`` in every stratum)."""


def _counting(counts: Counter):
    """Wrap esmfuzz.forward._call (every forward call) to add its tokens to ``counts``."""
    import esmfuzz.forward as forward

    original = forward._call

    def counted(impl, kind, timeout, inputs, model, *args, **kwargs):
        dtype = str(model.embed_tokens.weight.dtype).removeprefix("torch.")
        counts[dtype] += inputs["tokens"].numel()
        return original(impl, kind, timeout, inputs, model, *args, **kwargs)

    forward._call = counted


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:esm2_t6_8M_UR50D")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--examples", type=int, default=20, help="per target and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--as-width", type=int, default=1280,
                        help="keep as many batches as KEPT_BYTES holds at this embedding width "
                             "(1280: 650M's): the limit scales by the model's width over it")
    parser.add_argument("--targets", nargs="+", metavar="PROPERTY[STRATUM]",
                        help="only these of the mix (default: all of it)")
    args = parser.parse_args(argv)
    names = {f"{p}[{s}]": (p, s) for p, s in MIX}
    unknown = sorted(set(args.targets or ()) - set(names))
    if unknown:
        parser.error(f"--targets {' '.join(unknown)}: not in the mix ({', '.join(names)})")
    mix = [names[t] for t in args.targets] if args.targets else MIX

    from esmfuzz.config import Config, read_pyproject
    from esmfuzz.harness import KEPT_BYTES, Harness
    from esmfuzz.reach import draws, profile_config

    config = Config.from_mapping({**read_pyproject(ROOT), "model": args.model,
                                  "device": args.device})
    drawn = profile_config(Config.from_mapping({**read_pyproject(ROOT), "device": "cuda"}),
                           "soak")
    current = [Counter()]
    _counting(current[0])
    print(f"{args.model} on {args.device}; soak draws for cuda, {args.examples} examples per "
          f"target and seed, seeds {args.seeds}; kept as at width {args.as_width}; tokens "
          f"computed per example, padding included")
    print(f"{'target':<30}{'float16':>16}{'float32':>18}{'float64':>18}{'kept hits':>11}")
    totals = {"kept": Counter(), "recomputed": Counter()}
    for target in mix:
        per = {"kept": Counter(), "recomputed": Counter()}
        hits = examples = 0
        for seed in args.seeds:
            keeping, recomputing = Harness(config), Harness(config)
            keeping.kept.limit = KEPT_BYTES * keeping.pair.candidate.embed_dim // args.as_width
            recomputing.kept.limit = 0
            for sample in draws(target, drawn, profile="soak", seed=seed,
                                max_examples=args.examples):
                verdicts = {}
                for name, h in (("kept", keeping), ("recomputed", recomputing)):
                    current[0].clear()
                    verdicts[name] = h.check(target[0], sample)
                    per[name].update(current[0])
                a, b = verdicts["kept"], verdicts["recomputed"]
                if (a.ok, a.metrics, a.worst, a.margin) != (b.ok, b.metrics, b.worst, b.margin):
                    sys.exit(f"{target}: the kept outputs changed a verdict on {sample!r}")
                examples += 1
            hits += keeping.kept.hits
        cells = []
        for dtype in ("float16", "float32", "float64"):
            before, after = per["recomputed"][dtype] / examples, per["kept"][dtype] / examples
            cells.append(f"{before:7.0f} {_change(before, after):>8}")
        print(f"{target[0] + '[' + target[1] + ']':<30}" + "".join(f"{c:>18}" for c in cells)
              + f"{hits / examples:>11.2f}")
        for name in per:
            totals[name].update({k: v / examples for k, v in per[name].items()})
    print("sum over the targets (tokens per example of each, summed):")
    for dtype in ("float16", "float32", "float64"):
        before, after = totals["recomputed"][dtype], totals["kept"][dtype]
        print(f"  {dtype}: {before:.0f} -> {after:.0f} ({_change(before, after)})")


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before:+.0%}" if before else "-"


if __name__ == "__main__":
    main()
