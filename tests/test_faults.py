"""The fuzz targets catch every seeded fault and shrink it, and report nothing on correct code.

Each test runs the real ``pytest fuzz/`` in a subprocess under the ``ci`` profile, the
implementation plugged in by ``--esm-packed-impl``/``--esm-padded-impl``. The correct
implementations are the controls of ``tests.impls.packed.CONTROLS``, whose arithmetic
differs from fair-esm's (a control that ran fair-esm's own code could not show a false
alarm). CI runs the faults marked ``ci`` in ``tests.faults.FAULTS`` and one control on
one seed over the short strata; ``pytest tests/test_faults.py -m ""`` runs everything:
all faults, and every control on every target under seeds 1-20 (hours on two cores).
"""

import pytest

from esmfuzz.alphabet import residue_count
from tests.faults import FAULTS, RANDOM_WEIGHTS
from tests.faults.run import run_fuzz
from tests.impls.packed import CONTROLS

pytestmark = pytest.mark.e2e

SEEDS = tuple(range(1, 21))


def _cases():
    """Each fault under the ci profile's own seed; an edge fault under seeds 1 and 2."""
    for fault in FAULTS:
        for seed in (1, 2) if fault.edge else (None,):
            ci = fault.ci and seed in (None, 1)
            marks = ([] if ci else [pytest.mark.slow]) + ([] if fault.cpu else [pytest.mark.gpu])
            name = fault.name + (f"-seed{seed}" if seed else "")
            yield pytest.param(fault, seed, marks=marks, id=name)


@pytest.mark.parametrize("fault, seed", _cases())
def test_fault_is_caught_and_shrunk(fault, seed, tmp_path):
    extra = ("--esm-seed", str(seed)) if seed else ()
    run = run_fuzz(fault.options, tmp_path, select=fault.select, extra=extra)
    assert run.caught, f"{fault.name} was not caught:\n{run.output[-3000:]}"
    case = run.smallest_case
    assert case is not None, f"{fault.name}: no corpus case written:\n{run.output[-3000:]}"
    residues = sum(map(residue_count, case.sequences))
    assert len(case.sequences) <= fault.max_sequences, case.sequences
    assert residues <= fault.max_residues, case.sequences
    assert case.property in run.output and str(case.worst.get("layer")) in run.output


@pytest.mark.parametrize(
    "control, seed, select",
    [
        pytest.param(CONTROLS[0], SEEDS[0], "short and not padding", id="ci-short"),
        *(
            pytest.param(c, s, None, marks=pytest.mark.slow, id=f"{c.rpartition(':')[2]}-{s}")
            for c in CONTROLS
            for s in SEEDS
        ),
    ],
)
def test_correct_control_reports_nothing(control, seed, select, tmp_path):
    run = run_fuzz(("--esm-packed-impl", control), tmp_path, select=select,
                   extra=("--esm-seed", str(seed)))
    assert run.returncode == 0, run.output[-3000:]
    assert run.cases == [] and not any(r["failures"] for r in run.report["rows"])
    assert {r["property"] for r in run.report["rows"]} >= {"error_ratio"}


@pytest.mark.parametrize(
    "fault",
    [pytest.param(f, marks=[] if f.ci else [pytest.mark.slow], id=f.name)
     for f in FAULTS if f.random_passes],
)
def test_shortcut_passes_on_random_weights(fault, tmp_path):
    """The contrast the trained-like profile exists for: on the random weights these
    shortcuts stay within fair-esm's own float16 error (CI: the short strata)."""
    assert "--esm-model" not in fault.options
    run = run_fuzz((*fault.options, "--esm-model", RANDOM_WEIGHTS), tmp_path,
                   select="short" if fault.ci else "not crowded")
    assert run.returncode == 0, run.output[-3000:]
    assert run.cases == [] and not any(r["failures"] for r in run.report["rows"])
