"""Every seeded fault is caught by the real fuzz targets and shrunk to a small case."""

import pytest

from esmfuzz.alphabet import residue_count
from tests.faults import FAULTS
from tests.faults.run import run_fuzz

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "fault",
    [pytest.param(f, marks=[] if f.cpu else [pytest.mark.gpu]) for f in FAULTS],
    ids=lambda f: f.name,
)
def test_fault_is_caught_and_shrunk(fault, tmp_path):
    run = run_fuzz(fault.options, tmp_path, select=fault.select)
    assert run.caught, f"{fault.name} was not caught:\n{run.output[-3000:]}"
    case = run.smallest_case
    assert case is not None, f"{fault.name}: no corpus case written:\n{run.output[-3000:]}"
    residues = sum(map(residue_count, case.sequences))
    assert len(case.sequences) <= 6 and residues <= fault.max_residues, case.sequences
    assert case.property in run.output and str(case.worst.get("layer")) in run.output
