"""The fuzz targets catch every seeded fault and shrink it, and report nothing on a correct one.

Each test runs the real ``pytest fuzz/`` in a subprocess under the ``ci`` profile, the
implementation plugged in by ``--esm-packed-impl``/``--esm-padded-impl``. CI runs the
faults marked ``ci`` in ``tests.faults.FAULTS`` and the no-false-positive run on one seed
without the long strata; ``pytest tests/test_faults.py -m ""`` runs everything (all faults,
the correct implementation on every target under five seeds: about an hour on two cores).
"""

import pytest

from esmfuzz.alphabet import residue_count
from tests.faults import FAULTS
from tests.faults.run import run_fuzz

pytestmark = pytest.mark.e2e

CORRECT = ("--esm-packed-impl", "tests.impls.packed:independent_packed")
SEEDS = (1, 2, 3, 4, 5)


def _marks(fault):
    return ([] if fault.ci else [pytest.mark.slow]) + ([] if fault.cpu else [pytest.mark.gpu])


@pytest.mark.parametrize(
    "fault", [pytest.param(f, marks=_marks(f)) for f in FAULTS], ids=lambda f: f.name
)
def test_fault_is_caught_and_shrunk(fault, tmp_path):
    run = run_fuzz(fault.options, tmp_path, select=fault.select)
    assert run.caught, f"{fault.name} was not caught:\n{run.output[-3000:]}"
    case = run.smallest_case
    assert case is not None, f"{fault.name}: no corpus case written:\n{run.output[-3000:]}"
    residues = sum(map(residue_count, case.sequences))
    assert len(case.sequences) <= 6 and residues <= fault.max_residues, case.sequences
    assert case.property in run.output and str(case.worst.get("layer")) in run.output


@pytest.mark.parametrize(
    "seed, select",
    [
        pytest.param(SEEDS[0], "not long", id=f"{SEEDS[0]}-short-and-medium"),
        *(pytest.param(s, None, marks=pytest.mark.slow, id=str(s)) for s in SEEDS),
    ],
)
def test_correct_implementation_reports_nothing(seed, select, tmp_path):
    run = run_fuzz(CORRECT, tmp_path, select=select, extra=("--esm-seed", str(seed)))
    assert run.returncode == 0, run.output[-3000:]
    assert run.cases == [] and not any(r["failures"] for r in run.report["rows"])
    assert {r["property"] for r in run.report["rows"]} >= {"error_ratio", "isolation"}
