"""The ``esmfuzz`` command: ``info``, ``replay``, ``show``, ``known``, ``soak`` and ``report``.

A thin layer over :mod:`esmfuzz.harness` and :mod:`esmfuzz.corpus`; nothing
imports it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

from esmfuzz.errors import EsmfuzzError
from esmfuzz.mps import MODES as MPS_MODES

__all__ = ["main"]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _config(args):
    from esmfuzz.config import OPTION, merged, read_pyproject

    given = {name: getattr(args, OPTION[name].field) for name in _CONFIG_OPTIONS
             if getattr(args, OPTION[name].field, None)}
    return merged(read_pyproject(), given, lambda option: f"command-line options: {option.name}")


_CONFIG_OPTIONS = ("model", "device", "dtype", "oracle-dtype", "backend", "loading",
                   "device-memory", "packed-impl", "padded-impl")
"""The options of :mod:`esmfuzz.config` that ``esmfuzz info`` takes (``replay``: device)."""


def _implementation(name: str, kind: str) -> str:
    """``name``, and what runs there (the first line of its docstring: the adapters say
    their library's attention path), or why it cannot run here."""
    from esmfuzz.forward import ImplementationError, load_implementation

    try:
        function = load_implementation(name, option=f"{kind}_impl")
    except ImplementationError as exc:
        return f"{name}: unusable here: {exc}"
    doc = " ".join((function.__doc__ or "").strip().split("\n\n")[0].split())
    return f"{name}" + (f": {doc}" if doc else "")


def cmd_info(args) -> int:
    import torch

    from esmfuzz.attention import BACKENDS, backend_status, select_backend
    from esmfuzz.config import dtype_name
    from esmfuzz.models import (
        InsufficientMemory,
        parse_spec,
        plan_memory,
        resolve_device,
    )
    from esmfuzz.models.memory import one_copy_fits

    config = _config(args)
    device = resolve_device(config.device)
    dtype = config.dtype
    print(f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"fair-esm   {_version('fair-esm')}")
    print(f"flash-attn {_version('flash-attn')}")
    libraries = [f"{d} {_version(d)}" for d in ("transformers", "faesm", "esm-efficient")
                 if _version(d) != "not installed"]
    if libraries:
        print(f"adapters   {', '.join(libraries)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device     {device} ({name})")
    print(f"dtype      candidate {dtype_name(dtype)}, oracle {dtype_name(config.oracle_dtype)}")
    print("backends")
    status = backend_status(device, dtype)
    for backend in BACKENDS:
        reason = status[backend]
        print(f"  {backend:<13}{'available' if reason is None else 'unavailable: ' + reason}")
    chosen = select_backend(config.backend, device, dtype)
    skipped = [b for b in BACKENDS[: BACKENDS.index(chosen)] if status[b] is not None]
    why = f"first available of {', '.join(BACKENDS)}" + (
        f" ({', '.join(skipped)} unavailable)" if skipped else ""
    )
    print(f"  {config.backend} -> {chosen}" + (f": {why}" if config.backend == "auto" else ""))
    for kind in ("packed", "padded"):
        print(f"{kind:<11}{_implementation(getattr(config, f'{kind}_impl'), kind)}")
    spec = parse_spec(config.model)
    oracle = config.oracle_dtype
    weights = (f", {'trained-like' if spec.profile == 'trained' else 'random'} weights, "
               f"seed {spec.seed}" if spec.kind == "synthetic" else "")
    print(f"model      {spec.text} ({spec.kind}{weights})")
    try:
        chosen = plan_memory(spec, device=device, dtype=dtype, oracle_dtype=oracle,
                             loading=config.loading, device_memory=config.device_memory)
    except InsufficientMemory as exc:
        print(f"memory     DOES NOT FIT: {exc}")
        if args.activations:
            fits, need = one_copy_fits(spec, device, device_memory=config.device_memory)
            if not fits:
                print(f"activations skipped: one float32 copy ({need / 2**30:.1f} GiB) does "
                      f"not fit either")
                return 0
    else:
        print(f"memory     {chosen.estimate.describe()}; fits")
        print(f"loading    {chosen.loading}: {chosen.note}")
    if args.activations:
        _print_activations(spec, device)
    return 0


def _print_activations(spec, device) -> None:
    """The model's activation profile (``esmfuzz.models.profile``), in float32."""
    from esmfuzz.models import load_model
    from esmfuzz.models.profile import PROBE, activation_profile, format_profile

    model, alphabet = load_model(spec)
    model = model.eval().to(device)
    lengths = "/".join(str(len(s)) for s in PROBE)
    print(f"activations (float32, probe of {lengths} residues)")
    for line in format_profile(activation_profile(model, alphabet)):
        print(f"  {line}")


def cmd_replay(args) -> int:
    from esmfuzz.attention import BackendUnavailable
    from esmfuzz.corpus import load_corpus
    from esmfuzz.errors import HarnessError
    from esmfuzz.harness import config_for_case, harness_for

    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # implementations import as under `python -m`
    root = Path(args.directory or _config(args).corpus)
    if not root.is_dir():
        raise ValueError(f"corpus directory {str(root)!r} does not exist")
    cases, errors = load_corpus(root)
    rows, failed = [], 0
    for path, case in cases:
        try:
            harness = harness_for(config_for_case(case, device=args.device or "auto"))
            verdict = harness.check_case(case)
        except BackendUnavailable as exc:
            rows.append((path, case, "skipped", str(exc)))
            continue
        except HarnessError as exc:  # esmfuzz's own failure: says nothing of the case
            rows.append((path, case, "NOT CHECKED", f"{exc} ({exc.advice})"))
            failed += 1
            continue
        except Exception as exc:  # one broken case must not hide the others
            rows.append((path, case, "ERROR", f"{type(exc).__name__}: {exc}"))
            failed += 1
            continue
        expected = case.status == "fixed"
        if verdict.ok == expected:
            outcome = "ok" if expected else "still " + case.status
        else:
            outcome = "REGRESSED" if expected else "NOW PASSES (mark fixed)"
            failed += 1
        rows.append((path, case, outcome, verdict.brief()))
    print(f"{'case':<45}{'status':<8}{'result':<26}metric")
    for path, case, outcome, detail in rows:
        print(f"{case.property + '/' + path.stem:<45}{case.status:<8}{outcome:<26}{detail}")
    for error in errors:
        print(f"MALFORMED {error}")
    print(f"{len(rows)} cases, {failed} unexpected, {len(errors)} malformed")
    return 1 if failed or errors else 0


def cmd_show(args) -> int:
    """A case's full per-layer picture: re-run on every layer, one row per layer."""
    from esmfuzz.corpus import load_case
    from esmfuzz.harness import config_for_case, harness_for
    from esmfuzz.triage import signature

    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    case = load_case(args.case)
    harness = harness_for(config_for_case(case, device=args.device or "auto"))
    verdict = harness.check_case(case, layers=harness.all_layers)
    print(f"case       {args.case} ({case.status})")
    print(f"property   {case.property}; sequences {list(case.sequences)}")
    print(f"verdict    {'holds' if verdict.ok else 'violated'}: {verdict.brief()}")
    if not verdict.ok:
        print(f"signature  {signature(verdict, harness.layers)}")
    if verdict.layers:
        print(f"layers     {verdict.layer_pattern()}")
        print(f"{'layer':>6}  {'worst check':<18}{'value':>12}  status")
        for layer, (margin, metric, value) in sorted(verdict.layers.items()):
            print(f"{layer:>6}  {metric:<18}{value:>12.4g}  {'ok' if margin >= 0 else 'FAIL'}")
    for line in verdict.violations[: args.violations]:
        print(f"  - {line}")
    if len(verdict.violations) > args.violations:
        print(f"  ... {len(verdict.violations) - args.violations} more (--violations N)")
    return 0


def cmd_known(args) -> int:
    """Accept a divergence: the case is reported as accepted, with its reason, and its
    signature no longer fails a fuzz target."""
    from esmfuzz.corpus import set_status

    case = set_status(args.case, "accepted", reason=args.reason)
    print(f"{args.case}: accepted ({case.reason})")
    return 0


def cmd_soak(args) -> int:
    from esmfuzz.soak import run_soak

    return run_soak(duration=args.duration, workers=args.workers, database=args.database,
                    mps=args.mps, run_dir=args.run_dir, resume=args.resume,
                    pytest_args=args.pytest_args)


def cmd_report(args) -> int:
    from esmfuzz.report import write_report

    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esmfuzz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="device, versions, backends, model and memory estimate")
    replay = sub.add_parser("replay", help="re-run every corpus case and compare with its status")
    replay.add_argument("directory", nargs="?", help="corpus directory (default from pyproject)")
    show = sub.add_parser("show", help="re-run one corpus case on every layer: its full "
                          "per-layer picture")
    show.add_argument("case", help="path to a corpus case (.json)")
    show.add_argument("--violations", type=int, default=20, help="most violations to list")
    known = sub.add_parser("known", help="accept a corpus case's divergence, with a reason")
    known.add_argument("case", help="path to a corpus case (.json)")
    known.add_argument("--reason", required=True, help="why the divergence is accepted")
    soak = sub.add_parser(
        "soak", help="fuzz until time is up or Ctrl-C/SIGTERM; statistics, corpus and a "
        "report in a run directory; arguments it does not know go to pytest",
        epilog="example: esmfuzz soak --duration 8h --workers auto -- -k error_ratio "
        "--esm-packed-impl mypkg:forward_packed")
    soak.add_argument("--duration", help="90s, 10m, 8h or 1h30m (default 8h; with --resume: "
                      "how much longer)")
    soak.add_argument("--workers", default="1", help="pytest-xdist workers, worker i on "
                      "cuda:i %% n: a number, or auto for as many per GPU as memory and cores "
                      "allow (at most 8 under MPS, 4 without; default 1)")
    soak.add_argument("--mps", default="auto", choices=MPS_MODES,
                      help="CUDA MPS for workers sharing a GPU, so their kernels run side by "
                      "side: auto starts a private daemon when several share one (default)")
    soak.add_argument("--database", help="Hypothesis example database shared by machines: a "
                      "directory, or redis://host:port/db")
    soak.add_argument("--run-dir", help="where statistics and logs go (default: a new "
                      "timestamped folder under soak-runs/)")
    soak.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    report = sub.add_parser("report", help="write a soak run's HTML report")
    report.add_argument("run_dir", help="a soak run directory")
    report.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")
    from esmfuzz.config import OPTION

    for p in (replay, show):
        p.add_argument("--device", help=OPTION["device"].help)
    for name in _CONFIG_OPTIONS:
        info.add_argument(f"--{name}", dest=OPTION[name].field, help=OPTION[name].help)
    info.add_argument("--no-activations", dest="activations", action="store_false",
                      help="skip loading the model for its activation profile")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "soak":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.pytest_args = [a for a in rest if a != "--"]
    try:
        commands = {"info": cmd_info, "replay": cmd_replay, "show": cmd_show, "known": cmd_known,
                    "soak": cmd_soak, "report": cmd_report}
        return commands[args.command](args)
    except (EsmfuzzError, ValueError, RuntimeError) as exc:
        print(f"esmfuzz: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
