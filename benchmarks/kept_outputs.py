"""Tokens each dtype's forwards compute per example, with and without a saving.

Two savings, each against a harness without it (``--compare``):

- ``kept``: :class:`esmfuzz.harness.KeptOutputs` keeps the trusted forwards' outputs (the
  float64 oracle, fair-esm's padded baseline, the packed reference) across checks by exact
  batch; compared with a harness that keeps nothing.
- ``deferred``: the noise bounds leave out the baselines a pass does not need
  (``Harness.defer_baselines``); compared with a harness that computes every baseline.
  Both keep outputs.

This draws what a soak worker's slice of each fuzz target draws (the soak profile, the
first ``--examples`` of a run, ``--seeds``), checks every sample with both harnesses of
this checkout (the keeping ones hold ``KEPT_BYTES``, scaled to hold as many batches as at
650M's width), and counts the tokens (padding included) every forward call computed, by
dtype. The counts do not depend on the device's speed; the float32 and float64 tokens are
what bounds a 650M soak on a GPU. ``--packed-impl`` puts another packed forward under test,
as a user's run does. Both harnesses must give the same verdicts: it stops if one differs
in any recorded value (for ``deferred``, a pass's ratio is an upper bound, and only the
errors must agree).

    python benchmarks/kept_outputs.py --examples 20 --seeds 1 2 3
    python benchmarks/kept_outputs.py --compare deferred --packed-impl \
        tests.impls.packed:blockdiag_packed
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
    parser.add_argument("--compare", choices=("kept", "deferred"), default="kept",
                        help="the saving measured (see above)")
    parser.add_argument("--packed-impl", help="the packed forward under test (default: "
                                              "esmfuzz's reference, as pytest fuzz/ runs)")
    args = parser.parse_args(argv)
    names = {f"{p}[{s}]": (p, s) for p, s in MIX}
    unknown = sorted(set(args.targets or ()) - set(names))
    if unknown:
        parser.error(f"--targets {' '.join(unknown)}: not in the mix ({', '.join(names)})")
    mix = [names[t] for t in args.targets] if args.targets else MIX

    from esmfuzz.config import Config, read_pyproject
    from esmfuzz.harness import KEPT_BYTES, Harness
    from esmfuzz.reach import draws, profile_config

    impl = {"packed_impl": args.packed_impl} if args.packed_impl else {}
    config = Config.from_mapping({**read_pyproject(ROOT), "model": args.model,
                                  "device": args.device, **impl})
    drawn = profile_config(Config.from_mapping({**read_pyproject(ROOT), "device": "cuda"}),
                           "soak")
    current = [Counter()]
    _counting(current[0])
    without = {"kept": "keeping nothing", "deferred": "every baseline"}[args.compare]
    print(f"{args.model} on {args.device}, packed under test: {config.packed_impl}; soak draws "
          f"for cuda, {args.examples} examples per target and seed, seeds {args.seeds}; kept "
          f"as at width {args.as_width}; tokens computed per example, padding included, "
          f"{without} -> {args.compare}")
    print(f"{'target':<30}{'float16':>16}{'float32':>18}{'float64':>18}{'kept hits':>11}")
    totals = {"with": Counter(), "without": Counter()}
    for target in mix:
        per = {"with": Counter(), "without": Counter()}
        hits = examples = 0
        for seed in args.seeds:
            saving, plain = Harness(config), Harness(config)
            for h in (saving, plain):
                h.kept.limit = KEPT_BYTES * h.pair.candidate.embed_dim // args.as_width
            if args.compare == "kept":
                plain.kept.limit = 0
            else:
                plain.defer_baselines = False
            for sample in draws(target, drawn, profile="soak", seed=seed,
                                max_examples=args.examples):
                verdicts = {}
                for name, h in (("with", saving), ("without", plain)):
                    current[0].clear()
                    verdicts[name] = h.check(target[0], sample)
                    per[name].update(current[0])
                if not _same(verdicts["with"], verdicts["without"], args.compare):
                    sys.exit(f"{target}: {args.compare} changed a verdict on {sample!r}")
                examples += 1
            hits += saving.kept.hits
        cells = []
        for dtype in ("float16", "float32", "float64"):
            before, after = per["without"][dtype] / examples, per["with"][dtype] / examples
            cells.append(f"{before:7.0f} {_change(before, after):>8}")
        print(f"{target[0] + '[' + target[1] + ']':<30}" + "".join(f"{c:>18}" for c in cells)
              + f"{hits / examples:>11.2f}")
        for name in per:
            totals[name].update({k: v / examples for k, v in per[name].items()})
    print("sum over the targets (tokens per example of each, summed):")
    for dtype in ("float16", "float32", "float64"):
        before, after = totals["without"][dtype], totals["with"][dtype]
        print(f"  {dtype}: {before:.0f} -> {after:.0f} ({_change(before, after)})")


def _same(a, b, compare: str) -> bool:
    """Whether verdict ``a`` (with the saving) is ``b``'s: every recorded value, or, for a
    pass with deferred baselines, whose ratio is an upper bound, every value but the ratio."""
    if compare == "deferred" and a.ok and b.ok:
        ratios = ("error_ratio", "context_ratio")
        return ({k: v for k, v in a.metrics.items() if k not in ratios}
                == {k: v for k, v in b.metrics.items() if k not in ratios}
                and all(a.metrics[k] >= b.metrics[k] for k in ratios if k in b.metrics))
    return (a.ok, a.metrics, a.worst, a.margin) == (b.ok, b.metrics, b.worst, b.margin)


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before:+.0%}" if before else "-"


if __name__ == "__main__":
    main()
