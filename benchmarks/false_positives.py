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
from esmfuzz.config import Config, crowd_limits, dtype_name  # noqa: E402
from esmfuzz.harness import harness_for  # noqa: E402
from esmfuzz.registry import PROPERTIES  # noqa: E402
from tests.impls.packed import CONTROLS  # noqa: E402


def _seeds(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def _job(text: str) -> tuple[list[int], list[str]]:
    """``SEEDS[:PROPERTY,...]`` as (seeds, properties)."""
    seeds, _, names = text.partition(":")
    properties = names.split(",") if names and names != "all" else list(PROPERTIES)
    for name in properties:
        if name not in PROPERTIES:
            raise SystemExit(f"--job {text!r}: {name!r} is not one of {', '.join(PROPERTIES)}")
    return _seeds(seeds), properties


def _strata(properties: list[str]) -> list:
    """The strata of ``properties`` in order of first use: targets that share a stratum's
    strategy then run one after another, on the same samples (:func:`_groups`)."""
    strata: list = []
    for name in properties:
        strata += [x for x in PROPERTIES[name].strata if x not in strata]
    return strata


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


def _rows(args, harnesses, entries, stratum, at, layers, samples) -> list[dict]:
    """One row per target and control: its worst verdict over the same samples.

    ``entries`` are targets whose strategies drew the same ``samples`` (``error_ratio``,
    ``finite`` and ``packed_precision`` over one stratum). Each sample is checked against
    every target, control and dtype in turn, sharing the forward outputs they have in
    common (``Harness.check(reuse=)``: the oracle, the baselines, the FP32 path, whose
    models the dtypes' pairs share, and the forwards of the targets before). A row's
    ``seconds`` are its share, so the first control's include the oracle and the baselines.
    """
    # A control a target never calls gives the same row for every control.
    calling = {e.name: [h for kind, first, h in harnesses if kind in e.calls or first]
               for e in entries}
    worst = {e.name: [None] * len(calling[e.name]) for e in entries}
    failures = {e.name: [0] * len(calling[e.name]) for e in entries}
    seconds = {e.name: [0.0] * len(calling[e.name]) for e in entries}
    for sample in samples:
        reuse: dict = {}
        for entry in entries:
            name = entry.name
            for i, harness in enumerate(calling[name]):
                start = time.perf_counter()
                verdict = harness.check(name, sample, layers=layers(harness), reuse=reuse)
                seconds[name][i] += time.perf_counter() - start
                failures[name][i] += not verdict.ok
                if worst[name][i] is None or severity(verdict) > severity(worst[name][i]):
                    worst[name][i] = verdict
    rows = []
    for entry in entries:
        name = entry.name
        for harness, bad, verdict, spent in zip(
            calling[name], failures[name], worst[name], seconds[name]
        ):
            if bad:
                print(verdict.message(), file=sys.stderr, flush=True)
            config = harness.config
            tested = harness.under_test(name)
            rows.append({
                "model": config.model, "device": config.device, "dtype": dtype_name(config.dtype),
                "oracle": dtype_name(harness.pair.oracle_dtype),
                "control": tested[0].split()[-1] if tested else config.packed_impl,
                "seed": at, "property": name,
                "stratum": stratum, "examples": len(samples), "failures": bad,
                "metric": verdict.metric, "value": verdict.value, "bound": verdict.threshold,
                "severity": severity(verdict), "path": verdict.path,
                "layer": verdict.worst.get("layer"),
                "max_tokens": max(sum(residue_count(s) + 2 for s in x.sequences)
                                  for x in samples),
                "max_sequences": max(len(x.sequences) for x in samples),
                "seconds": round(spent, 2),
            })
    return rows


def _groups(entries, config, stratum, *, n: int, at: int) -> list[tuple[list, list]]:
    """``(samples, targets)`` with the targets whose strategies drew the same samples."""
    groups: list[tuple[list, list]] = []
    for entry in entries:
        drawn = samples_of(entry, config, stratum, n=n, at=at)
        for samples, members in groups:
            if samples == drawn:
                members.append(entry)
                break
        else:
            groups.append((drawn, [entry]))
    return groups


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
    parser.add_argument("--job", action="append", metavar="SEEDS[:PROPERTY,...]",
                        help="run these seeds of these properties (all by default); "
                        "repeated, jobs run in turn on the same loaded models, and replace "
                        "--seeds and --properties")
    parser.add_argument("--ready", type=Path, help="touch this file once the models are loaded")
    parser.add_argument("--strata", nargs="+", help="only these strata (mixed: the targets "
                        "over all lengths)")
    parser.add_argument("--crowd-tokens", type=int, default=0,
                        help="token budget of the crowded stratum (0: 16384, as dev and soak)")
    parser.add_argument("--crowd-sequences", type=int, default=0,
                        help="most sequences of a crowded pack (0: 256)")
    parser.add_argument("--layers", choices=("all", "checked"), default="all",
                        help="check every layer, or those pytest fuzz/ checks (0, 1, L/2, L)")
    parser.add_argument("--deferred", action="store_true",
                        help="leave out the baselines a pass does not need, as a fuzz run does "
                             "(the same verdicts; a pass's ratio is then an upper bound): by "
                             "default every baseline runs, so the values are the exact ratios")
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
            harness = harness_for(config)
            harness.defer_baselines = args.deferred
            harnesses.append((kind or "packed", control == args.controls[0], harness))
    if args.ready:
        args.ready.touch()
    jobs = [_job(text) for text in args.job] if args.job else [
        (_seeds(args.seeds), args.properties)]
    for seeds, properties in jobs:
        for at in seeds:
            for stratum in _strata(properties):
                if args.strata and stratum not in args.strata:
                    continue
                entries = [PROPERTIES[name] for name in properties
                           if stratum in PROPERTIES[name].strata
                           and harnesses[0][2].judges(name) is None]
                config = harnesses[0][2].config
                for samples, members in _groups(entries, config, stratum, n=args.examples,
                                                at=at):
                    if time.monotonic() > deadline:
                        return 0
                    for row in _rows(args, harnesses, members, stratum, at, layers, samples):
                        print(json.dumps(row), flush=True)
                        if args.json:
                            with args.json.open("a") as out:
                                out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
