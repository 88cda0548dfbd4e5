"""Worst value each correct control reaches against each property's bound.

For every control (correct packed forwards whose arithmetic differs from fair-esm's:
``tests.impls.packed.CONTROLS``), seed, and fuzz target of :mod:`esmfuzz.registry`, this
draws the target's own Hypothesis strategy under that seed, checks every sample on
every layer through ``Harness.check`` (the code path of ``pytest fuzz/``), and keeps
the worst verdict. A bound holds where no control reaches it; ``docs/false-positives.md``
is written from its JSON output::

    python benchmarks/false_positives.py --model synthetic:esm2_t6_8M_UR50D --device cpu \\
        --dtypes float16 --seeds 1-20 --examples 6 --json fp-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from esmfuzz.alphabet import residue_count  # noqa: E402
from esmfuzz.harness import Config, crowd_limits, harness_for  # noqa: E402
from esmfuzz.registry import PROPERTIES  # noqa: E402
from tests.impls.packed import CONTROLS  # noqa: E402


def _seeds(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def samples_of(entry, config, stratum, *, n: int, at: int) -> list:
    """``n`` samples the target's strategy draws under seed ``at``.

    Hypothesis tries the simplest sample first, the same under every seed: it is
    dropped, so that seeds differ.
    """
    drawn = []

    @seed(at)
    @settings(max_examples=n + 1, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(entry.samples(config, stratum))
    def collect(sample):
        drawn.append(sample)

    collect()
    return drawn[1 : n + 1]


def severity(verdict) -> float:
    """How close to failing: 1 - the verdict's normalised margin; 1.0 is the bound itself
    (value / bound for upper bounds, (1 - value) / (1 - bound) for cosines)."""
    return 1.0 - verdict.margin


def _rows(args, harnesses, entry, stratum, at, layers) -> list[dict]:
    """One row per control: its worst verdict over the same samples.

    Each sample is checked against every control and dtype in turn, sharing the forward
    outputs they have in common (``Harness.check(reuse=)``: the oracle, the baselines, and
    the FP32 path, whose models the dtypes' pairs share); a row's ``seconds`` are its
    control's share, so the first control's include the oracle and the baselines.
    """
    config = harnesses[0].config
    samples = samples_of(entry, config, stratum, n=args.examples, at=at)
    worst = [None] * len(harnesses)
    failures = [0] * len(harnesses)
    seconds = [0.0] * len(harnesses)
    for sample in samples:
        reuse: dict = {}
        for i, harness in enumerate(harnesses):
            start = time.perf_counter()
            verdict = harness.check(entry.name, sample, layers=layers(harness), reuse=reuse)
            seconds[i] += time.perf_counter() - start
            failures[i] += not verdict.ok
            if worst[i] is None or severity(verdict) > severity(worst[i]):
                worst[i] = verdict
    rows = []
    for harness, bad, verdict, spent in zip(harnesses, failures, worst, seconds):
        if bad:
            print(verdict.message(), file=sys.stderr, flush=True)
        config = harness.config
        tested = harness.under_test(entry.name)
        rows.append({
            "model": config.model, "device": config.device, "dtype": config.dtype,
            "control": tested[0].split()[-1] if tested else config.packed_impl,
            "seed": at, "property": entry.name,
            "stratum": stratum or "mixed", "examples": len(samples), "failures": bad,
            "metric": verdict.metric, "value": verdict.value, "bound": verdict.threshold,
            "severity": severity(verdict), "path": verdict.path,
            "layer": verdict.worst.get("layer"),
            "max_tokens": max(sum(residue_count(s) + 2 for s in x.sequences) for x in samples),
            "max_sequences": max(len(x.sequences) for x in samples),
            "seconds": round(spent, 2),
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:esm2_t6_8M_UR50D")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float16"])
    parser.add_argument("--controls", nargs="+", default=list(CONTROLS),
                        help="packed forwards (module:function), or padded=module:function")
    parser.add_argument("--seeds", default="1-3", help="N or N-M")
    parser.add_argument("--examples", type=int, default=6, help="samples per target and seed")
    parser.add_argument("--properties", nargs="+", default=list(PROPERTIES))
    parser.add_argument("--strata", nargs="+", help="only these strata (mixed: the targets "
                        "over all lengths)")
    parser.add_argument("--crowd-tokens", type=int, default=0,
                        help="token budget of the crowded stratum (0: 16384, as dev and soak)")
    parser.add_argument("--crowd-sequences", type=int, default=0,
                        help="most sequences of a crowded pack (0: 256)")
    parser.add_argument("--layers", choices=("all", "checked"), default="all",
                        help="check every layer, or those pytest fuzz/ checks (0, 1, L/2, L)")
    parser.add_argument("--json", type=Path, help="append one JSON line per row to this file")
    parser.add_argument("--budget", type=float, default=0,
                        help="seconds after which no new row starts (0: no limit)")
    args = parser.parse_args(argv)

    def layers(harness):
        return harness.all_layers if args.layers == "all" else harness.layers

    deadline = time.monotonic() + args.budget if args.budget else math.inf
    harnesses = []
    for dtype in args.dtypes:
        for control in args.controls:
            kind, _, impl = control.rpartition("=")
            config = Config(model=args.model, device=args.device, dtype=dtype,
                            crowd_tokens=args.crowd_tokens, crowd_sequences=args.crowd_sequences,
                            **{f"{kind or 'packed'}_impl": impl})
            most, tokens = crowd_limits(config, profile="dev")
            config = dataclasses.replace(config, crowd_sequences=most, crowd_tokens=tokens)
            harnesses.append((kind or "packed", control == args.controls[0], harness_for(config)))
    for at in _seeds(args.seeds):
        for name in args.properties:
            entry = PROPERTIES[name]
            # A control this target never calls gives the same row for every control.
            calling = [h for kind, first, h in harnesses if kind in entry.calls or first]
            for stratum in entry.strata:
                if args.strata and (stratum or "mixed") not in args.strata:
                    continue
                if time.monotonic() > deadline:
                    return 0
                for row in _rows(args, calling, entry, stratum, at, layers):
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with args.json.open("a") as out:
                            out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
