"""quant_linear equals fp32 x @ dequant(W).T for every weight format, batch size and odd shape."""
from __future__ import annotations

import functools
import logging
import platform
import threading

import pytest
import torch

from lmserve.kernels import cpu_extension
from lmserve.kernels import cpu_quant_linear as cql
from lmserve.kernels.cpu_quant_linear import quant_linear, quant_linear_ref
from lmserve.kernels.quant_weight import QuantWeight

from .helpers import awq_pack, random_ggml_bytes

FORMATS = ["Q4_0", "Q4_1", "Q8_0", "AWQ_g64", "AWQ_g32", "RTN4_g32", "RTN4_g64", "RTN4_g128",
           "RTN8_g32", "RTN8_g64", "RTN8_g128"]
# out not a multiple of 8 or 16; in = 576 and 1536 are SmolLM2's, 96 ends in a half chunk of 32.
SHAPES = [(37, 576), (100, 1536), (13, 96)]
# 3: a partial block of x rows, 8: two blocks; GEMV_MAX_M and one more straddle the switch
# from the GEMV to the tiled GEMM, which 64 takes too.
BATCHES = [1, 3, 8, cql.GEMV_MAX_M, cql.GEMV_MAX_M + 1, 64]


def make_weight(fmt: str, out: int, in_features: int, seed: int = 0) -> QuantWeight:
    group = int(fmt.rsplit("_g", 1)[1]) if "_g" in fmt else 32
    if in_features % group:
        pytest.skip(f"group {group} does not divide in_features {in_features}")
    return _build_weight(fmt, out, in_features, seed, group)


@functools.lru_cache(maxsize=None)     # one build per format and shape, shared by every M
def _build_weight(fmt: str, out: int, in_features: int, seed: int, group: int) -> QuantWeight:
    gen = torch.Generator().manual_seed(seed)
    if fmt in ("Q4_0", "Q4_1", "Q8_0"):
        data = torch.from_numpy(random_ggml_bytes(fmt, out, in_features, seed))
        return QuantWeight.from_gguf_blocks(fmt, data, (out, in_features))
    if fmt.startswith("AWQ"):
        out = (out + 7) // 8 * 8          # AWQ packs 8 output columns per int32
        q = torch.randint(0, 16, (in_features, out), generator=gen)
        z = torch.randint(0, 16, (in_features // group, out), generator=gen)
        s = (torch.rand(in_features // group, out, generator=gen) * 0.02 + 1e-3).half()
        return QuantWeight.from_awq(awq_pack(q), awq_pack(z), s, group)
    bits = int(fmt[3])
    return QuantWeight.quantize(torch.randn(out, in_features, generator=gen), bits, group)


@functools.lru_cache(maxsize=64)
def _dense(w: QuantWeight) -> torch.Tensor:
    return w.dequantize().double()


def assert_matches(y: torch.Tensor, x: torch.Tensor, w: QuantWeight, bias=None, tol=1e-4):
    """|y - x @ W.T| relative to |x| @ |W|.T: the scale of fp32 accumulation-order error."""
    dense = _dense(w)
    want = x.double() @ dense.T
    scale = x.double().abs() @ dense.abs().T
    if bias is not None:
        want, scale = want + bias.double(), scale + bias.double().abs()
    assert y.dtype == torch.float32 and y.shape == want.shape
    err = ((y.double() - want).abs() / scale.clamp_min(1e-30)).max().item()
    assert err < tol, f"relative error {err:.3g} exceeds {tol}"


@pytest.mark.parametrize("m", BATCHES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("fmt", FORMATS)
def test_kernel_matches_fp32_reference(fmt, shape, m):
    w = make_weight(fmt, *shape)
    x = torch.randn(m, shape[1], generator=torch.Generator().manual_seed(m))
    y, ref = quant_linear(x, w), quant_linear_ref(x, w)
    assert_matches(y, x, w)
    assert_matches(ref, x, w)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("m", [1, 2, 5, 64])
def test_bias_strided_and_3d_inputs(m):
    w = make_weight("Q4_1", 100, 576)
    bias = torch.randn(100)
    big = torch.randn(m, 700)
    x = big[:, 50:626]                                   # rows 700 floats apart
    assert_matches(quant_linear(x, w, bias), x, w, bias)
    xt = torch.randn(576, m).t()                          # column-major
    assert_matches(quant_linear(xt, w), xt, w)
    x3 = torch.randn(2, m, 576)
    y3 = quant_linear(x3, w, bias)
    assert y3.shape == (2, m, 100)
    assert_matches(y3.reshape(-1, 100), x3.reshape(-1, 576), w, bias)


def test_fused_rows_match_separate_projections():
    parts = [make_weight("Q4_1", n, 576, seed) for seed, n in enumerate((576, 192, 192))]
    fused = QuantWeight.cat_rows(parts)
    x = torch.randn(3, 576)
    y = quant_linear(x, fused)
    torch.testing.assert_close(y, torch.cat([quant_linear(x, p) for p in parts], dim=1))
    shard = fused.rows(576, 768)                          # a view, as a TP shard would be
    torch.testing.assert_close(quant_linear(x, shard), y[:, 576:768])


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q8_0", "AWQ_g64", "RTN4_g128", "RTN8_g64"])
def test_extension_dequantize_is_bit_exact(fmt):
    ext = cql.load_extension()
    if ext is None:
        pytest.skip("CPU extension unavailable here")
    w = make_weight(fmt, 29, 1536)
    got = ext.dequantize(w.qweight, w.scales, w.mins, w.bits, w.group_size)
    assert torch.equal(got, w.dequantize())


def test_wrong_input_features_name_the_problem():
    w = make_weight("Q4_1", 8, 576)
    for fn in (quant_linear, quant_linear_ref):
        with pytest.raises(ValueError, match="x has 512 features .* weight expects 576"):
            fn(torch.randn(2, 512), w)


def test_concurrent_callers_get_their_own_results():
    weights = [make_weight(f, 64, 576, i) for i, f in enumerate(["Q4_1", "Q8_0", "AWQ_g64"])]
    xs = [torch.randn(m, 576) for m in (1, 4, 16)]
    want = {(i, j): quant_linear(x, w) for i, w in enumerate(weights) for j, x in enumerate(xs)}
    errors = []

    def worker(i):
        for _ in range(20):
            for j, x in enumerate(xs):
                if not torch.equal(quant_linear(x, weights[i]), want[i, j]):
                    errors.append((i, j))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64")
                    or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the AVX2 extension only builds on x86-64 with AVX2")
def test_extension_builds_on_avx2_machines():
    assert cql.load_extension() is not None


def test_unavailable_extension_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(cql, "_EXT", _fresh(cql._EXT))
    monkeypatch.setenv("LMSERVE_DISABLE_CPU_EXT", "1")
    w = make_weight("Q4_1", 16, 576)
    x = torch.randn(2, 576)
    with caplog.at_level(logging.WARNING, logger=cpu_extension.__name__):
        ys = [quant_linear(x, w) for _ in range(3)]
    assert [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()] == [
        "lmserve CPU extension lmserve_quant_gemv unavailable (disabled by "
        "LMSERVE_DISABLE_CPU_EXT=1); using the slower torch reference quant_linear_ref"]
    assert_matches(ys[-1], x, w)


def test_compile_failure_never_reaches_the_caller(monkeypatch, caplog):
    import torch.utils.cpp_extension as cpp_extension

    def broken_load(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: not found")

    monkeypatch.setattr(cql, "_EXT", _fresh(cql._EXT, unsupported=lambda: None))
    monkeypatch.delenv("LMSERVE_DISABLE_CPU_EXT", raising=False)
    monkeypatch.setattr(cpp_extension, "load", broken_load)
    w = make_weight("Q8_0", 16, 576)
    x = torch.randn(1, 576)
    with caplog.at_level(logging.WARNING, logger=cpu_extension.__name__):
        assert_matches(quant_linear(x, w), x, w)
    assert "building the extension failed: RuntimeError: Error building extension" in caplog.text


def _fresh(ext: cpu_extension.CPUExtension, unsupported=None) -> cpu_extension.CPUExtension:
    """A not-yet-built copy of ext, so a test can build (or fail to) from scratch."""
    return cpu_extension.CPUExtension(ext.name, ext.sources, unsupported, ext.reference)


@pytest.mark.parametrize("fmt", ["Q4_1", "Q8_0", "AWQ_g64"])
def test_bf16_gemm_is_close_above_decode_size_and_exact_below(fmt):
    if cql.load_extension() is None:
        pytest.skip("the bf16 path is the extension's; the reference is fp32 only")
    w = make_weight(fmt, 100, 576)
    gen = torch.Generator().manual_seed(3)
    bias = torch.randn(w.out_features, generator=gen)
    small = torch.randn(cql.GEMV_MAX_M, 576, generator=gen)
    # decode-sized calls take the fp32 GEMV whatever the flag says
    assert torch.equal(quant_linear(small, w, bias, gemm_dtype="bfloat16"), quant_linear(small, w, bias))
    big = torch.randn(300, 576, generator=gen)
    got = quant_linear(big, w, bias, gemm_dtype="bfloat16")
    exact = quant_linear(big, w, bias)
    assert not torch.equal(got, exact)           # it did take the bf16 path
    # bf16 keeps 8 significant bits: inputs, tile and output each rounded once
    assert_matches(got, big, w, bias, tol=2e-2)
