"""A pytest plugin (``-p oracle_seam``) that breaks esmfuzz's own oracle through its test
seam, ``Harness.oracle_impl``, never through the implementation under test.

``$ESMFUZZ_BROKEN_ORACLE``: ``always`` (out of memory on every call) or a number of
tokens (out of memory on padded batches wider than that).
"""

from __future__ import annotations

import os

import pytest
import torch

from esmfuzz.forward import oracle_forward


def _broken(model, tokens, repr_layers):
    mode = os.environ.get("ESMFUZZ_BROKEN_ORACLE", "always")
    if mode == "always" or tokens.shape[1] > int(mode):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB "
                                     "(simulated, in esmfuzz's oracle)")
    return oracle_forward(model, tokens, repr_layers)


@pytest.fixture(autouse=True)
def _broken_oracle(esm_harness):
    esm_harness.oracle_impl = _broken
