"""benchmarks/padded_batches.py draws every target's samples and prints their batches."""

from __future__ import annotations

from esmfuzz.packing import PADDED_BATCH_TOKENS
from esmfuzz.registry import targets
from tests.conftest import benchmark


def test_every_target_gets_a_row_and_no_batch_passes_the_cap(capsys):
    benchmark("padded_batches").main(["--device", "cuda", "--examples", "3", "--seed", "2"])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in lines[2:-2]}
    assert set(rows) == {f"{p}[{s or 'mixed'}]" for p, s in targets()}
    for tokens, before, _, _, now, _, largest in rows.values():
        assert tokens <= now and tokens <= before
        assert largest <= PADDED_BATCH_TOKENS
    assert lines[-2].split()[0] == "all"
    assert lines[-1].startswith("padded tokens now / before: ")
