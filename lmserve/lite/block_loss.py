"""AWQ scale search against the output of the block the scaled linears feed (AutoAWQ's loss).

The Gram-matrix error of awq.py is exact for a linear's own output, but q/k/v and gate/up feed
non-linear blocks: a q/k error passes through the softmax, and a key or value error of the first
token (the attention sink) reaches every later token; a gate error is weighted by silu' and by
up x. Here a candidate scale s is judged by running the block forward on stored calibration
activations with the scaled, fake-quantized weights Q(W diag s) diag(1/s), as AutoAWQ does:
  input_layernorm -> q, k, v: loss = sum of squares of the change of the attention block's output
      o_proj(softmax-attention(rotary(q), rotary(k), v)) over each stored sequence (causal, with
      GQA), o_proj in float;
  post_attention_layernorm -> gate, up: loss = change of down(silu(gate x) * up x), down in float.
(v_proj -> o_proj and up -> down feed a linear directly: their Gram-matrix error is already the
block-output error, so awq.py keeps it.) s = 1, plain round-to-nearest, is always a candidate, so
the chosen scale never does worse than RTN on this loss.

Cost: one block forward per grid point on the stored samples, so only a few calibration
sequences are kept (`--block-samples`); the Gram statistics still use all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmserve.kernels.cpu_ops import rotary_ref
from lmserve.lite.awq import AwqSettings, scale_grid
from lmserve.lite.quantizer import fake_quantize
from lmserve.model.config import ModelConfig

@dataclass(slots=True)
class BlockInputs:
    """Calibration activations of one layer, as the float or partly quantized model computes them.
    attn: per stored sequence (x [T, hidden] = input_layernorm output, (cos, sin) [T, 1, D]).
    mlp: [tokens, hidden], post_attention_layernorm outputs of the same sequences."""
    attn: list
    mlp: torch.Tensor


def attention_output(x: torch.Tensor, cos_sin, wq, wk, wv, wo, cfg: ModelConfig,
                     biases: dict | None = None) -> torch.Tensor:
    """The attention block of one sequence: [T, hidden] -> [T, hidden] (o_proj output)."""
    b = biases or {}
    t, d = x.shape[0], cfg.head_dim
    q = F.linear(x, wq, b.get("q")).view(t, cfg.num_heads, d)
    k = F.linear(x, wk, b.get("k")).view(t, cfg.num_kv_heads, d)
    v = F.linear(x, wv, b.get("v")).view(t, cfg.num_kv_heads, d)
    cos, sin = cos_sin
    q, k = rotary_ref(q, cos, sin), rotary_ref(k, cos, sin)
    rep = cfg.num_heads // cfg.num_kv_heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    a = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                       is_causal=True, scale=d ** -0.5)
    return F.linear(a.transpose(0, 1).reshape(t, cfg.num_heads * d), wo, b.get("o"))


def mlp_output(x: torch.Tensor, wg, wu, wd) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)


def _candidates(w: torch.Tensor, x_mean: torch.Tensor, st: AwqSettings):
    """The scale grid of awq.search_scale, s = 1 (plain RTN) first."""
    yield torch.ones(w.shape[1])
    yield from scale_grid(w, x_mean, st)


def _search(w: torch.Tensor, x_mean: torch.Tensor, st: AwqSettings, loss) -> tuple[torch.Tensor, float, float]:
    """loss(fake-quantized W) -> float. -> (best s, its loss, RTN's loss)."""
    best_s, best, rtn = None, float("inf"), None
    for s in _candidates(w, x_mean, st):
        err = loss(fake_quantize(w * s, st.w_bits, st.w_group_size) / s)
        if rtn is None:
            rtn = err
        if err < best:
            best_s, best = s, err
    return best_s, best, rtn


def search_attention_scale(wq, wk, wv, wo, x_mean, inputs: BlockInputs, cfg: ModelConfig,
                           st: AwqSettings, biases: dict | None = None):
    """Scale of the q/k/v inputs by the attention block's output error. -> (s, err, rtn err)."""
    with torch.inference_mode():
        refs = [attention_output(x, cs, wq, wk, wv, wo, cfg, biases) for x, cs in inputs.attn]
        nq, nk = wq.shape[0], wk.shape[0]

        def loss(wqkv: torch.Tensor) -> float:
            q, k, v = wqkv.split([nq, nk, wv.shape[0]])
            return sum(float((attention_output(x, cs, q, k, v, wo, cfg, biases) - ref).pow(2).sum())
                       for (x, cs), ref in zip(inputs.attn, refs))
        return _search(torch.cat([wq, wk, wv]), x_mean, st, loss)


def search_mlp_scale(wg, wu, wd, x_mean, inputs: BlockInputs, st: AwqSettings):
    """Scale of the gate/up inputs by the MLP output error (down_proj in float)."""
    with torch.inference_mode():
        ref = mlp_output(inputs.mlp, wg, wu, wd)
        n = wg.shape[0]

        def loss(wgu: torch.Tensor) -> float:
            g, u = wgu.split([n, wu.shape[0]])
            return float((mlp_output(inputs.mlp, g, u, wd) - ref).pow(2).sum())
        return _search(torch.cat([wg, wu]), x_mean, st, loss)


def block_scale(key: str, weights: dict, prefix: str, x_mean: torch.Tensor, inputs: BlockInputs,
                cfg: ModelConfig, st: AwqSettings):
    """awq_layer's hook for --loss block: the qkv and gate_up scales. -> (s, err, rtn err)."""
    w = {n: weights[prefix + n + ".weight"] for n in
         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    if key == "qkv":
        biases = {n[-6]: weights[prefix + n + ".bias"] for n in
                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
                  if prefix + n + ".bias" in weights}
        return search_attention_scale(w["self_attn.q_proj"], w["self_attn.k_proj"],
                                      w["self_attn.v_proj"], w["self_attn.o_proj"], x_mean, inputs,
                                      cfg, st, biases)
    if key == "gate_up":
        return search_mlp_scale(w["mlp.gate_proj"], w["mlp.up_proj"], w["mlp.down_proj"], x_mean,
                                inputs, st)
    raise ValueError(f"no block loss for input {key!r}")
