"""AWQ beats round-to-nearest where activations have outlier channels; group sizes are checked."""
from __future__ import annotations

import pytest
import torch

from lmserve.lite.awq import AwqSettings, output_error, search_scale
from lmserve.lite.quantizer import fake_quantize, quantize_groups
from lmserve.lite.quantize_model import awq_layer, check_model_group_size, quantize_rtn
from lmserve.model.config import ModelConfig


def test_group_size_that_does_not_divide_the_layer_is_refused_with_the_sizes_that_do():
    cfg = ModelConfig("llama", 49152, 576, 1536, 30, 9, 3, 64)    # the default model's shape
    with pytest.raises(ValueError, match=r"--w-group-size 128 does not divide the 576 input features"
                                         r".*group sizes that do: 32, 64"):
        check_model_group_size(cfg, 128)
    check_model_group_size(cfg, 64)
    with pytest.raises(ValueError, match="--w-group-size must be one of 32, 64, 128"):
        check_model_group_size(cfg, 96)


def test_quantizer_codes_round_trip_and_8bit_is_symmetric():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    g4 = quantize_groups(w, 4, 32)
    assert int(g4.q.max()) <= 15 and torch.allclose(g4.to_quant_weight().dequantize(), g4.dequantize(), atol=1e-6)
    g8 = quantize_groups(w, 8, 32)
    assert torch.all(g8.zeros == 128)
    assert torch.allclose(g8.to_quant_weight().dequantize(), g8.dequantize(), atol=1e-6)
    assert (g8.dequantize() - w).abs().max() < (g4.dequantize() - w).abs().max() / 8


def _outlier_activations(tokens=512, width=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=g)
    x[:, :4] *= 30.0                       # a few channels carry most of the magnitude
    return x


def test_scale_search_lowers_the_output_error_versus_rtn():
    torch.manual_seed(0)
    x = _outlier_activations()
    w = torch.randn(96, 128) * 0.05
    gram = x.t() @ x
    st = AwqSettings(4, 32)
    s, err, rtn = search_scale(w, x.abs().mean(0), gram, st)
    assert err < 0.7 * rtn
    # the Gram form is the output error measured directly on the activations
    direct = ((x @ (fake_quantize(w * s, 4, 32) / s).t() - x @ w.t()) ** 2).sum()
    assert abs(direct.item() - err) / err < 1e-3



def test_awq_layer_on_a_tiny_model_with_outlier_channels_beats_rtn(tiny_dir, text_file):
    """Whole decoder: the hidden states of the AWQ model are closer to the float ones than RTN's."""
    from lmserve.eval.forward import DirectModel
    from lmserve.lite.calibrate import calibrate
    from lmserve.lite.quantize_model import float_weights, quantize_awq
    scorer, stats = calibrate(tiny_dir, text_file, 4, 64, progress=False)
    cfg = scorer.config
    ids = scorer.tokenizer.encode(open(text_file).read())[:64]
    ref = scorer.hidden_states(ids).clone()
    weights = float_weights(scorer.loaded)

    def hidden_error(tensors):
        from lmserve.model.llama import LlamaForCausalLM
        m = LlamaForCausalLM(cfg, torch.float32, 64)
        m.load_weights((k, v.to_quant_weight() if hasattr(v, "to_quant_weight") else v)
                       for k, v in tensors.items())
        scorer.model = m
        return (scorer.hidden_states(ids) - ref).pow(2).mean().item()

    rtn = hidden_error(quantize_rtn(weights, cfg, 4, 32))
    awq = hidden_error(quantize_awq(dict(weights), stats, cfg, AwqSettings(4, 32, n_grid=10), progress=False))
    assert awq < 0.8 * rtn, (awq, rtn)


def test_full_gram_clip_search_lowers_the_whole_output_error():
    """Cross-group terms count when inputs are correlated: the full-Gram sweep starts from the
    block answer and can only lower the whole error."""
    from lmserve.lite.awq import search_clip, search_clip_full
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1024, 128, generator=g) @ (torch.randn(128, 128, generator=g) / 8 + torch.eye(128))
    w = torch.randn(64, 128, generator=g) * 0.05
    w[:, ::16] *= 6.0                                  # a few large weights make clipping matter
    gram = x.t() @ x
    st = AwqSettings(4, 32)
    block = output_error(fake_quantize(w, 4, 32, search_clip(w, gram, st)) - w, gram)
    full = output_error(fake_quantize(w, 4, 32, search_clip_full(w, gram, st)) - w, gram)
    assert full < 0.97 * block, (full, block)
