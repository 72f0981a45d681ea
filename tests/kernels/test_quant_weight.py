"""QuantWeight: every import path dequantizes exactly like its source format."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from lmserve.kernels.quant_layout import pack_nibbles, unpack_nibbles
from lmserve.kernels.quant_weight import QuantWeight

from .helpers import awq_pack, random_ggml_bytes

GGML_TYPES = {"Q4_0": gguf.GGMLQuantizationType.Q4_0, "Q4_1": gguf.GGMLQuantizationType.Q4_1,
              "Q8_0": gguf.GGMLQuantizationType.Q8_0}


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("shape", [(37, 576), (5, 1536), (3, 96)])
def test_gguf_blocks_dequantize_exactly_like_gguf(qtype, shape):
    data = random_ggml_bytes(qtype, *shape)
    w = QuantWeight.from_gguf_blocks(qtype, torch.from_numpy(data), shape)
    want = gguf.quants.dequantize(data, GGML_TYPES[qtype]).reshape(shape)
    assert w.shape == shape and w.bits == (8 if qtype == "Q8_0" else 4) and w.group_size == 32
    assert torch.equal(w.dequantize(), torch.from_numpy(want))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_quantized_real_values_round_trip(qtype):
    x = np.random.default_rng(1).standard_normal((17, 576)).astype(np.float32)
    data = gguf.quants.quantize(x, GGML_TYPES[qtype])
    w = QuantWeight.from_gguf_blocks(qtype, torch.from_numpy(data), x.shape)
    want = gguf.quants.dequantize(data, GGML_TYPES[qtype])
    assert torch.equal(w.dequantize(), torch.from_numpy(want))
    assert w.nbytes <= data.nbytes + w.out_features * (w.in_features // 32) * 2   # stays low-bit


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_awq_dequantizes_to_q_minus_z_times_s(group_size):
    torch.manual_seed(0)
    in_features, out = 1536, 40
    q = torch.randint(0, 16, (in_features, out))
    z = torch.randint(0, 16, (in_features // group_size, out))
    s = (torch.rand(in_features // group_size, out) * 0.02 + 1e-3).half()
    w = QuantWeight.from_awq(awq_pack(q), awq_pack(z), s, group_size)
    direct = (q.float() - z.float().repeat_interleave(group_size, 0)) * \
        s.float().repeat_interleave(group_size, 0)
    assert torch.equal(w.dequantize(), direct.t())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_rtn_quantize_error_within_half_a_step(bits, group_size):
    torch.manual_seed(0)
    x = torch.randn(19, 1536)
    w = QuantWeight.quantize(x, bits, group_size)
    step = w.scales.float().repeat_interleave(group_size, 1)
    err = (w.dequantize() - x).abs()
    assert (err <= step * 0.5 + 2e-3 * x.abs().amax()).all()   # fp16-rounded min adds a little
    assert w.codes().min() >= (0 if bits == 4 else -128)


@pytest.mark.parametrize("in_features", [32, 96, 576])
def test_nibble_packing_is_word_interleaved(in_features):
    q = torch.randint(0, 16, (3, in_features), dtype=torch.uint8)
    packed = pack_nibbles(q)
    assert torch.equal(unpack_nibbles(packed), q)
    lanes = 8 if in_features >= 64 else 4
    words = packed[:, :4 * lanes].contiguous().view(torch.int32)
    for k in range(8):     # nibble k of word j is element k * lanes + j
        assert torch.equal((words >> (4 * k)) & 0xF, q[:, k * lanes:(k + 1) * lanes].int())


def test_rows_and_cat_rows_fuse_and_split():
    torch.manual_seed(0)
    parts = [QuantWeight.quantize(torch.randn(n, 576), 4, 64) for n in (9, 3, 3)]
    parts[1] = QuantWeight.quantize(torch.randn(3, 576), 4, 64, scale_dtype=torch.float32)
    fused = QuantWeight.cat_rows(parts)
    assert fused.shape == (15, 576) and fused.scales.dtype == torch.float32
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))
    assert torch.equal(fused.rows(9, 12).dequantize(), parts[1].dequantize())
    q8 = QuantWeight.from_gguf_blocks("Q8_0", torch.from_numpy(random_ggml_bytes("Q8_0", 4, 64)),
                                      (4, 64))
    with pytest.raises(ValueError, match="cannot fuse"):
        QuantWeight.cat_rows([parts[0], q8])
    with pytest.raises(ValueError, match=r"0 <= start < end <= 15"):
        fused.rows(10, 16)


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="in_features 576 is not a multiple of group_size 128"):
        QuantWeight.quantize(torch.randn(4, 576), 4, 128)
    with pytest.raises(ValueError, match="group_size 128 must be one of .* and divide in_features 576"):
        QuantWeight.from_awq(torch.zeros(576, 2, dtype=torch.int32),
                             torch.zeros(4, 2, dtype=torch.int32), torch.zeros(4, 16).half(), 128)
    with pytest.raises(ValueError, match=r"Q4_1 \(4, 64\) needs 4 x 40 uint8 bytes"):
        QuantWeight.from_gguf_blocks("Q4_1", torch.zeros(4, 36, dtype=torch.uint8), (4, 64))
    with pytest.raises(ValueError, match="unsupported ggml type 'Q5_K'"):
        QuantWeight.from_gguf_blocks("Q5_K", torch.zeros(4, 36, dtype=torch.uint8), (4, 64))
    with pytest.raises(ValueError, match="bits must be 4 or 8 .*got bits=3"):
        QuantWeight.quantize(torch.randn(4, 64), 3, 32)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
@pytest.mark.parametrize("in_features", [64, 96, 576, 1536])    # 96: an odd number of blocks
def test_direct_ggml_repack_equals_parse_then_pack(qtype, in_features):
    from lmserve.kernels import quant_layout as ql
    rows, n_blocks = 24, in_features // 32
    g = torch.Generator().manual_seed(in_features)
    data = torch.randint(0, 256, (rows, n_blocks * ql.GGML_BLOCK_BYTES[qtype]), dtype=torch.uint8, generator=g)
    blocks = data.view(rows, n_blocks, -1)
    blocks[:, :, 0:2] = torch.tensor([0, 60], dtype=torch.uint8)         # finite fp16 scales
    if qtype == "Q4_1":
        blocks[:, :, 2:4] = torch.tensor([0, 188], dtype=torch.uint8)    # finite fp16 mins
    q, scales, mins, _ = ql.parse_ggml_blocks(qtype, data, rows, in_features)
    packed, scales2, mins2 = ql.ggml_q4_to_kernel(qtype, data, rows, in_features)
    assert torch.equal(packed, ql.pack_nibbles(q))
    assert torch.equal(scales, scales2) and torch.equal(mins, mins2)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("span", [(0, 192), (192, 384), (384, 576), (64, 96)])
def test_cols_is_the_dequantized_column_slice(bits, span):
    w = QuantWeight.quantize(torch.randn(6, 576, generator=torch.Generator().manual_seed(2)), bits, 32)
    part = w.cols(*span)
    assert part.shape == (6, span[1] - span[0])
    assert torch.equal(part.dequantize(), w.dequantize()[:, span[0]:span[1]])
    assert part.qweight.untyped_storage().data_ptr() != w.qweight.untyped_storage().data_ptr()


def test_cols_inside_a_group_is_refused():
    w = QuantWeight.quantize(torch.randn(4, 768), 4, 128)      # AWQ g128 at tp 4: 192 columns each
    with pytest.raises(ValueError, match=r"columns \[0, 192\) do not fall on whole groups of 128"):
        w.cols(0, 192)
