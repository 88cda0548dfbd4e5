"""Adapters: the ESM-2 implementations people run, behind esmfuzz's forward contracts.

Each adapter builds its library's model from the fair-esm model under test (an explicit,
complete weight map, a strict load, the same dtype and device), so that
``--esm-padded-impl esmfuzz.adapters.transformers:padded_forward`` fuzzes the library
with nothing else to write. The libraries are optional extras, imported only here.
"""
