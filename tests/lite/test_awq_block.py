"""--loss block: AWQ scales judged by the attention / MLP block output (lite/block_loss.py)."""
from __future__ import annotations

import json

import pytest
import torch

from lmserve.cli.main import main
from lmserve.lite.awq import AwqSettings
from lmserve.lite.block_loss import (BlockInputs, attention_output, mlp_output,
                                     search_attention_scale, search_mlp_scale)
from lmserve.lite.quantizer import fake_quantize
from lmserve.model.config import ModelConfig
from lmserve.nn.rotary import RotaryEmbedding

CFG = ModelConfig("llama", 256, 128, 256, 1, 4, 2, 32)      # GQA: 4 query heads, 2 KV heads


def _inputs(seed: int = 0, seqs: int = 2, tokens: int = 24) -> BlockInputs:
    g = torch.Generator().manual_seed(seed)
    rotary = RotaryEmbedding(CFG.head_dim, tokens, 10000.0, None, tokens)
    attn = []
    for _ in range(seqs):
        x = torch.randn(tokens, CFG.hidden_size, generator=g)
        x[:, :4] *= 25.0                   # outlier channels, as LLM activations have
        attn.append((x, rotary.cos_sin(torch.arange(tokens), torch.float32)))
    return BlockInputs(attn, torch.cat([x for x, _ in attn]))


def _weights(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    h, qs, kvs, i = CFG.hidden_size, CFG.num_heads * CFG.head_dim, CFG.num_kv_heads * CFG.head_dim, 256
    return {n: torch.randn(*shape, generator=g) * 0.05 for n, shape in
            dict(q=(qs, h), k=(kvs, h), v=(kvs, h), o=(h, qs), gate=(i, h), up=(i, h), down=(h, i)).items()}


def test_block_searches_never_do_worse_than_rtn_on_their_own_loss_and_measure_it_directly():
    inputs, w = _inputs(), _weights()
    x_mean = inputs.mlp.abs().mean(0)
    st = AwqSettings(4, 32, n_grid=8)
    s, err, rtn = search_attention_scale(w["q"], w["k"], w["v"], w["o"], x_mean, inputs, CFG, st)
    assert err < 0.9 * rtn, (err, rtn)          # outliers: a scale helps, and RTN is a candidate
    # the reported error is the attention output's change with the weights actually chosen
    qkv = fake_quantize(torch.cat([w["q"], w["k"], w["v"]]) * s, 4, 32) / s
    q, k, v = qkv.split([w["q"].shape[0], w["k"].shape[0], w["v"].shape[0]])
    direct = sum(float((attention_output(x, cs, q, k, v, w["o"], CFG)
                        - attention_output(x, cs, w["q"], w["k"], w["v"], w["o"], CFG)).pow(2).sum())
                 for x, cs in inputs.attn)
    assert abs(direct - err) <= 1e-4 * err
    s, err, rtn = search_mlp_scale(w["gate"], w["up"], w["down"], x_mean, inputs, st)
    assert err < 0.9 * rtn, (err, rtn)
    st1 = AwqSettings(4, 32, n_grid=1, scale_form="x")   # grid {a = 0}: s = 1, RTN itself
    assert search_mlp_scale(w["gate"], w["up"], w["down"], x_mean, inputs, st1)[1] == pytest.approx(
        float((mlp_output(inputs.mlp, fake_quantize(w["gate"], 4, 32), fake_quantize(w["up"], 4, 32),
                          w["down"]) - mlp_output(inputs.mlp, w["gate"], w["up"], w["down"])).pow(2).sum()))


def test_block_functions_equal_what_the_served_layer_computes(tiny_dir, text_file):
    """attention_output / mlp_output on the activations the walk keeps reproduce the layer's own
    o_proj and down_proj outputs (rotary, causal mask, GQA, scaling all as served)."""
    from lmserve.lite.calib_data import calibration_samples
    from lmserve.lite.calibrate import load_float_model
    from lmserve.lite.quantize_model import float_weights
    from lmserve.lite.sequential import LayerRunner
    scorer = load_float_model(tiny_dir, 32)
    samples = calibration_samples(scorer.tokenizer, text_file, 3, 32)
    w = float_weights(scorer.loaded)
    runner = LayerRunner(scorer, samples)
    runner.record(0, advance=True)                     # layer 1 sees real layer-0 outputs
    outs = {"o": [], "down": []}
    layer = scorer.model.layers[1]
    hooks = [layer.o_proj.register_forward_hook(lambda m, a, y: outs["o"].append(y.clone())),
             layer.down_proj.register_forward_hook(lambda m, a, y: outs["down"].append(y.clone()))]
    try:
        stats = runner.record(1, keep=2)
    finally:
        for h in hooks:
            h.remove()
    block, cfg, p = stats["block"], scorer.config, "model.layers.1."
    assert len(block.attn) == 2 and block.mlp.shape[0] == 2 * len(samples[0])
    for (x, cs), ref in zip(block.attn, outs["o"]):
        got = attention_output(x, cs, w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"],
                               w[p + "self_attn.v_proj.weight"], w[p + "self_attn.o_proj.weight"], cfg)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    got = mlp_output(block.mlp, w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"],
                     w[p + "mlp.down_proj.weight"])
    torch.testing.assert_close(got, torch.cat(outs["down"][:2]), rtol=1e-4, atol=1e-4)


def test_loss_flags_are_validated_with_their_names(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="--loss must be one of gram, block, got 'mse'"):
        AwqSettings(loss="mse")
    with pytest.raises(ValueError, match="--block-samples must be at least 1, got 0"):
        AwqSettings(loss="block", block_samples=0)
    with pytest.raises(SystemExit, match="--loss block record their statistics layer by layer"):
        main(["lite", "auto_awq", tiny_dir, "--calib-stats", str(tmp_path), "--loss", "block",
              "--w-group-size", "64", "--work-dir", str(tmp_path / "m")])
    with pytest.raises(SystemExit):                    # argparse: not one of the choices
        main(["lite", "auto_awq", tiny_dir, "--loss", "mse", "--work-dir", str(tmp_path / "m")])


def test_cli_block_loss_writes_an_awq_model_closer_to_float_than_rtn(tiny_dir, text_file, tmp_path):
    from lmserve.eval.forward import DirectModel
    ids = list(range(100, 164))
    ref = DirectModel.load(tiny_dir, 64).hidden_states(ids)
    errs = {}
    for name, flags in (("rtn", ["--search-grid", "1", "--scale-form", "x", "--no-clip"]),   # s = 1
                        ("block", ["--loss", "block", "--block-samples", "2", "--search-grid", "8"])):
        out = tmp_path / name
        main(["lite", "auto_awq", tiny_dir, "--calib-dataset", text_file, "--calib-samples", "3",
              "--calib-seqlen", "32", "--w-group-size", "32", *flags, "--work-dir", str(out)])
        assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
        errs[name] = (DirectModel.load(str(out), 64).hidden_states(ids) - ref).pow(2).mean().item()
    assert errs["block"] < 0.8 * errs["rtn"], errs
