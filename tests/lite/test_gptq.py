"""GPTQ rounding beats round-to-nearest on the output error, reduces to it when inputs are
uncorrelated, and its 4-bit AutoGPTQ checkpoint round-trips and serves; the sequential walk
reproduces the float model when nothing is quantized."""
from __future__ import annotations

import json

import pytest
import torch

from lmserve.lite.awq import AwqSettings, output_error
from lmserve.lite.gptq import gptq_quantize
from lmserve.lite.pack import pack_gptq
from lmserve.lite.quantizer import fake_quantize, quantize_groups


def _correlated_inputs(tokens=1024, width=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(width, width, generator=g) / width ** 0.5 + torch.eye(width)
    x = torch.randn(tokens, width, generator=g) @ mix
    x[:, :4] *= 10.0                      # outlier channels, as LLM activations have
    return x


def test_gptq_output_error_is_well_below_round_to_nearest():
    torch.manual_seed(0)
    x = _correlated_inputs()
    w = torch.randn(64, 128) * 0.05
    gram = x.t() @ x
    rtn = output_error(fake_quantize(w, 4, 32) - w, gram)
    gq = gptq_quantize(w, gram, 4, 32)
    err = output_error(gq.dequantize() - w, gram)
    assert err < 0.7 * rtn, (err, rtn)
    # the Gram form is the output error on the activations themselves
    direct = ((x @ (gq.dequantize() - w).t()) ** 2).sum()
    assert abs(direct.item() - err) / err < 1e-3


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """A diagonal Gram matrix gives GPTQ no other column to move an error onto."""
    torch.manual_seed(1)
    w = torch.randn(16, 64)
    gram = torch.diag(torch.rand(64) + 0.5)
    gq, rtn = gptq_quantize(w, gram, 4, 32), quantize_groups(w, 4, 32)
    assert torch.equal(gq.q, rtn.q) and torch.equal(gq.zeros, rtn.zeros)
    assert torch.equal(gq.scales, rtn.scales)


def test_min_zero_keeps_gptq_format_zero_points_representable():
    torch.manual_seed(2)
    w = torch.randn(8, 64)
    w[:4, :32] = w[:4, :32].abs() + 0.1          # all-positive groups: round-to-nearest gives z = 0
    x = _correlated_inputs(256, 64)
    gram = x.t() @ x
    rtn = quantize_groups(w, 4, 32)
    assert int(rtn.zeros.min()) == 0
    gq = gptq_quantize(w, gram, 4, 32, min_zero=1)
    assert int(gq.zeros.min()) >= 1
    # one code of 16 spent below zero still leaves it better than round-to-nearest
    assert output_error(gq.dequantize() - w, gram) < output_error(rtn.dequantize() - w, gram)
    # written in AutoGPTQ's layout (z - 1 stored) and read back by the checkpoint loader
    from lmserve.model.quant_checkpoint import _from_gptq
    packed = pack_gptq(gq)                       # would refuse a zero point of 0
    back = _from_gptq(packed, {"bits": 4, "group_size": 32}, "test")
    assert torch.allclose(back.dequantize(), gq.dequantize(), atol=1e-6)


def test_settings_errors_name_the_flag():
    with pytest.raises(ValueError, match="--rounding must be one of nearest, gptq"):
        AwqSettings(4, 64, rounding="best")
    with pytest.raises(ValueError, match="--scale-form must be one of xw, x"):
        AwqSettings(4, 64, scale_form="w")
    with pytest.raises(ValueError, match="--damp must be in"):
        AwqSettings(4, 64, damp=0.0)


def test_sequential_walk_without_quantization_reproduces_the_float_model(tiny_dir, text_file):
    from lmserve.lite.calibrate import calibrate
    from lmserve.lite.sequential import LayerRunner
    scorer, stats = calibrate(tiny_dir, text_file, 2, 32, progress=False)
    ids = scorer.tokenizer.encode(open(text_file).read())[:32]
    ref = scorer.hidden_states(ids).clone()
    runner = LayerRunner(scorer, [ids])
    first = runner.record(0)
    for i in range(scorer.config.num_layers):
        runner.run(i, advance=True)
    hidden, residual = runner.states[0]
    out, _ = scorer.model.norm(hidden, residual)
    assert torch.allclose(out, ref, atol=1e-5)
    # the first layer's statistics on one sample: those calibration records for the same tokens
    single = calibrate(tiny_dir, text_file, 1, 32, progress=False)[1]["layers"][0]
    assert torch.allclose(first["gate_up"]["gram"], single["gate_up"]["gram"], rtol=1e-4, atol=1e-3)


def test_cli_auto_gptq_round_trips_serves_and_beats_rtn(tiny_dir, text_file, tmp_path):
    from lmserve.cli.main import main
    from lmserve.eval.forward import DirectModel
    from lmserve.kernels.quant_weight import QuantWeight
    common = ["--calib-dataset", text_file, "--calib-samples", "4", "--calib-seqlen", "64",
              "--w-group-size", "32", "--embedding-bits", "16"]
    main(["lite", "auto_gptq", tiny_dir, *common, "--sequential", "--sink-weight", "8", "--work-dir", str(tmp_path / "g")])
    qcfg = json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "gptq" and qcfg["bits"] == 4 and qcfg["sym"] is False
    from lmserve.lite.recipes import rtn
    rtn(tiny_dir, str(tmp_path / "r"), 4, 32, embedding_bits=16)
    ref_model = DirectModel.load(tiny_dir, 64)
    ids = ref_model.tokenizer.encode(open(text_file).read())[:64]
    ref = ref_model.hidden_states(ids)
    g = DirectModel.load(str(tmp_path / "g"), 64)
    assert isinstance(g.model.layers[0].qkv_proj.weight, QuantWeight)
    err_g = (g.hidden_states(ids) - ref).pow(2).mean()
    err_r = (DirectModel.load(str(tmp_path / "r"), 64).hidden_states(ids) - ref).pow(2).mean()
    assert err_g < 0.8 * err_r, (err_g, err_r)
    assert err_g < 0.05 * ref.pow(2).mean()


def test_awq_with_gptq_rounding_beats_awq_alone_on_a_tiny_model(tiny_dir, text_file):
    """Same AWQ scales, different rounding: the whole model's hidden states move less."""
    from lmserve.lite.calibrate import calibrate
    from lmserve.lite.quantize_model import float_weights, quantize_awq
    from lmserve.model.llama import LlamaForCausalLM
    scorer, stats = calibrate(tiny_dir, text_file, 4, 64, progress=False)
    ids = scorer.tokenizer.encode(open(text_file).read())[:64]
    ref = scorer.hidden_states(ids).clone()
    weights = float_weights(scorer.loaded)

    def hidden_error(rounding: str) -> float:
        st = AwqSettings(4, 32, n_grid=10, rounding=rounding)
        tensors = quantize_awq(dict(weights), stats, scorer.config, st, progress=False)
        m = LlamaForCausalLM(scorer.config, torch.float32, 64)
        m.load_weights((k, v.to_quant_weight() if hasattr(v, "to_quant_weight") else v)
                       for k, v in tensors.items())
        scorer.model = m
        return (scorer.hidden_states(ids) - ref).pow(2).mean().item()

    nearest, gptq = hidden_error("nearest"), hidden_error("gptq")
    assert gptq < 0.8 * nearest, (gptq, nearest)


def test_sink_weight_counts_the_first_token_more_in_the_attention_inputs_only(tiny_dir, text_file):
    from lmserve.lite.awq import input_gram
    from lmserve.lite.calibrate import calibrate
    from lmserve.lite.quantize_model import _sink_weight
    _, stats = calibrate(tiny_dir, text_file, 2, 32, progress=False)
    s = stats["layers"][0]["qkv"]
    x0 = s["first"]
    assert torch.linalg.matrix_rank(x0) == 2                     # one first token per sample
    expected = (s["gram"] + 99.0 * x0) / s["tokens"]
    assert torch.allclose(input_gram(s, 100.0), expected)
    st = AwqSettings(4, 32, sink_weight=100.0)
    assert _sink_weight("qkv", st) == _sink_weight("o", st) == 100.0
    assert _sink_weight("gate_up", st) == _sink_weight("down", st) == 1.0
    with pytest.raises(ValueError, match="calibrate again"):
        input_gram({"gram": s["gram"], "tokens": s["tokens"]}, 100.0)
    with pytest.raises(ValueError, match="--sink-weight must be at least 1"):
        AwqSettings(4, 32, sink_weight=0.5)
