"""Packed batches: tokenisation, cu_seqlens, position ids, round trips and layout validation."""

from __future__ import annotations

import esm.data
import pytest
import torch

from esmfuzz.alphabet import InvalidSequence
from esmfuzz.packing import (
    PackedBatch,
    PackingError,
    check_packed,
    pack,
    pad,
    position_ids,
    unpack,
)

ALPHABET = esm.data.Alphabet.from_architecture("ESM-1b")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ]),
]
SEQUENCES = ["MKTAYIAK", "G<mask>LV", "W", "ACDEFGHIKLMNPQRSTVWYXBZUO", "<mask>"]


def _valid():
    batch = pack(["MKT", "A", "GLVW"], ALPHABET)
    return batch.tokens, batch.cu_seqlens, batch.max_seqlen


# --------------------------------------------------------------------------- pack


def test_pack_layout_and_tokens():
    batch = pack(SEQUENCES, ALPHABET)
    lengths = [10, 6, 3, 27, 3]  # residues + <cls> + <eos>; "<mask>" is one residue
    assert isinstance(batch, PackedBatch)
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.cu_seqlens.tolist() == [0, 10, 16, 19, 46, 49]
    assert batch.lengths == lengths
    assert batch.num_sequences == len(SEQUENCES)
    assert batch.max_seqlen == 27 and isinstance(batch.max_seqlen, int)
    assert batch.tokens.dtype == torch.long and batch.tokens.shape == (49,)
    starts, ends = batch.cu_seqlens[:-1].long(), batch.cu_seqlens[1:].long() - 1
    assert (batch.tokens[starts] == ALPHABET.cls_idx).all()
    assert (batch.tokens[ends] == ALPHABET.eos_idx).all()
    assert (batch.tokens != ALPHABET.padding_idx).all()
    check_packed(batch.tokens, batch.cu_seqlens, batch.max_seqlen)


def test_pack_matches_fair_esm_batch_converter():
    padded = pad(SEQUENCES, ALPHABET)
    _, _, expected = ALPHABET.get_batch_converter()([(str(i), s) for i, s in enumerate(SEQUENCES)])
    assert torch.equal(padded, expected)
    batch = pack(SEQUENCES, ALPHABET)
    for row, chunk in zip(padded, unpack(batch.tokens, batch.cu_seqlens), strict=True):
        assert torch.equal(row[: len(chunk)], chunk)
        assert (row[len(chunk):] == ALPHABET.padding_idx).all()


def test_mask_is_one_residue_and_mask_idx():
    batch = pack(["<mask>", "A<mask>C", "<mask><mask>"], ALPHABET)
    assert batch.lengths == [3, 5, 4]
    chunks = unpack(batch.tokens, batch.cu_seqlens)
    m, cls, eos = ALPHABET.mask_idx, ALPHABET.cls_idx, ALPHABET.eos_idx
    assert chunks[0].tolist() == [cls, m, eos]
    assert chunks[1].tolist() == [cls, ALPHABET.get_idx("A"), m, ALPHABET.get_idx("C"), eos]
    assert chunks[2].tolist() == [cls, m, m, eos]


def test_first_token_is_cls_id_0_and_pad_is_1():
    """Bug class: a fallback padding with ``<cls>`` (0) instead of ``<pad>`` (1)."""
    assert (ALPHABET.cls_idx, ALPHABET.padding_idx) == (0, 1)


def test_position_ids_reset_at_each_boundary():
    batch = pack(["MKT", "A", "GLVWY"], ALPHABET)
    positions = position_ids(batch.cu_seqlens)
    assert positions.dtype == torch.long
    assert positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6]


def test_position_ids_single_sequence_is_arange():
    cu = torch.tensor([0, 1000], dtype=torch.int32)
    assert torch.equal(position_ids(cu), torch.arange(1000))


@pytest.mark.parametrize("device", DEVICES)
def test_pack_to_device(device):
    batch = pack(["MKT", "A"], ALPHABET, device=device)
    for tensor in (batch.tokens, batch.cu_seqlens):
        assert tensor.device.type == device
    assert batch.cu_seqlens.dtype == torch.int32
    back = batch.to("cpu")
    assert back.max_seqlen == batch.max_seqlen
    assert torch.equal(back.tokens, pack(["MKT", "A"], ALPHABET).tokens)


def test_pack_max_residues_accepted():
    batch = pack(["A" * 1022], ALPHABET)
    assert batch.lengths == [1024] and batch.max_seqlen == 1024


# --------------------------------------------------------------------------- unpack


def test_pack_unpack_round_trip():
    batch = pack(SEQUENCES, ALPHABET)
    chunks = unpack(batch.tokens, batch.cu_seqlens)
    assert len(chunks) == len(SEQUENCES)
    for sequence, chunk in zip(SEQUENCES, chunks, strict=True):
        assert chunk.tolist() == [ALPHABET.cls_idx, *ALPHABET.encode(sequence), ALPHABET.eos_idx]
    assert torch.equal(torch.cat(chunks), batch.tokens)


def test_unpack_keeps_trailing_dimensions():
    batch = pack(["MKT", "A", "GL"], ALPHABET)
    values = torch.arange(batch.tokens.numel() * 4, dtype=torch.float32).view(-1, 4)
    parts = unpack(values, batch.cu_seqlens)
    assert [tuple(p.shape) for p in parts] == [(5, 4), (3, 4), (4, 4)]
    assert torch.equal(torch.cat(parts), values)


# --------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("sequence", "match"),
    [
        ("AJ", r"'J' is not in the ESM-2 alphabet at residue 1"),
        ("", r"empty"),
        ("acd", r"lowercase residue 'a'"),
        ("A<cls>C", r"special-token text '<cls>'"),
        ("A<eos>", r"special-token text '<eos>'"),
        ("A<pad>", r"special-token text '<pad>'"),
        ("M*", r"'\*' is not in the ESM-2 alphabet"),
        ("M1", r"'1' is not in the ESM-2 alphabet"),
        ("A<msk>", r"unknown token text '<msk>'"),
        ("A" * 1023, r"1023 residues, over the model maximum of 1022"),
        ("A" * 1022 + "<mask>", r"1023 residues"),
    ],
)
def test_pack_rejects_invalid_sequences(sequence, match):
    with pytest.raises(InvalidSequence, match=match) as info:
        pack(["MKT", sequence], ALPHABET)
    assert "sequences[1]" in str(info.value)
    with pytest.raises(InvalidSequence, match=match):
        pad(["MKT", sequence], ALPHABET)


@pytest.mark.parametrize("sequences", [[], "MKT", ()])
def test_pack_rejects_a_non_list(sequences):
    with pytest.raises(PackingError, match="non-empty list of str"):
        pack(sequences, ALPHABET)


def test_pack_rejects_non_str_item():
    with pytest.raises(InvalidSequence, match=r"sequences\[0\]=5 is a int"):
        pack([5], ALPHABET)


# --------------------------------------------------------------------------- check_packed


def test_check_packed_accepts_valid_layout():
    tokens, cu, max_seqlen = _valid()
    check_packed(tokens, cu, max_seqlen)
    check_packed(tokens, cu, max_seqlen + 100)  # an upper bound is allowed


@pytest.mark.parametrize(
    ("cu", "match"),
    [
        ([1, 5, 8, 14], r"cu_seqlens=\[1, 5, 8, 14\] must start at 0, starts at 1"),
        ([0, 5, 5, 14], r"cu_seqlens=.* must be strictly increasing: cu_seqlens\[2\]=5 <= "
                        r"cu_seqlens\[1\]=5"),
        ([0, 8, 5, 14], r"must be strictly increasing: cu_seqlens\[2\]=5 <= cu_seqlens\[1\]=8"),
        ([0, 5, 8, 13], r"cu_seqlens=.* must end at the token count 14, ends at 13"),
        ([0, 5, 8, 15], r"must end at the token count 14, ends at 15"),
        ([0], r"cu_seqlens=\[0\] must hold at least two offsets"),
    ],
)
def test_check_packed_bad_cu_seqlens(cu, match):
    tokens, _, _ = _valid()
    with pytest.raises(PackingError, match=match):
        check_packed(tokens, torch.tensor(cu, dtype=torch.int32), 6)


def test_check_packed_rejects_int64_cu_seqlens():
    tokens, cu, max_seqlen = _valid()
    with pytest.raises(PackingError, match=r"cu_seqlens\.dtype=torch\.int64"):
        check_packed(tokens, cu.long(), max_seqlen)


def test_check_packed_rejects_short_max_seqlen():
    tokens, cu, max_seqlen = _valid()
    assert max_seqlen == 6
    with pytest.raises(PackingError, match=r"max_seqlen=5 is smaller than the longest sequence "
                                           r"\(6 tokens, sequence 2\)"):
        check_packed(tokens, cu, 5)


@pytest.mark.parametrize("max_seqlen", [6.0, "6", None, True, torch.tensor(6)])
def test_check_packed_rejects_non_int_max_seqlen(max_seqlen):
    tokens, cu, _ = _valid()
    with pytest.raises(PackingError, match=r"max_seqlen must be an int"):
        check_packed(tokens, cu, max_seqlen)


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (torch.zeros(2, 7, dtype=torch.long), r"tokens must be a 1-D LongTensor, got a tensor of "
                                               r"shape \(2, 7\)"),
        ([0, 1, 2], r"tokens must be a 1-D LongTensor, got list"),
        (torch.zeros(14, dtype=torch.int32), r"tokens\.dtype=torch\.int32"),
    ],
)
def test_check_packed_bad_tokens(tokens, match):
    _, cu, max_seqlen = _valid()
    with pytest.raises(PackingError, match=match):
        check_packed(tokens, cu, max_seqlen)


def test_check_packed_bad_cu_seqlens_shape():
    tokens, cu, max_seqlen = _valid()
    with pytest.raises(PackingError, match=r"cu_seqlens must be a 1-D int32 tensor"):
        check_packed(tokens, cu[None], max_seqlen)
    with pytest.raises(PackingError, match=r"cu_seqlens must be a 1-D int32 tensor, got list"):
        check_packed(tokens, cu.tolist(), max_seqlen)


def test_check_packed_clips_long_offset_lists_in_messages():
    tokens = torch.zeros(40, dtype=torch.long)
    cu = torch.arange(1, 42, dtype=torch.int32)
    with pytest.raises(PackingError, match=r"\.\.\. \(41 offsets\)\] must start at 0"):
        check_packed(tokens, cu, 1)


def test_packing_error_is_a_value_error():
    assert issubclass(PackingError, ValueError)
