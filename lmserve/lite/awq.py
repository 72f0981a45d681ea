"""Activation-aware weight quantization (AWQ) of one decoder layer, from calibration statistics.

For each place where a per-input-channel scale s can be folded away exactly
    input_layernorm -> q, k, v      v_proj rows -> o_proj      post_attention_layernorm -> gate, up
    up_proj rows -> down_proj
the weights W of the consumers are quantized as Q(W diag(s)) diag(1/s). s = mean|x|^a / mean|w|^(1-a)
(normalized), with the exponent a searched on a grid. The error minimized is the consumers' output
error over all calibration tokens, computed exactly from the input Gram matrix G = sum x x^T:
    err(s) = tr(dW G dW^T),  dW = Q(W diag s) diag(1/s) - W
so the search costs the same whatever the number of calibration tokens. s = 1 (plain round-to-
nearest) is always a candidate, so the search never does worse than RTN on this error. Then each
group's clipping ratio is searched the same way on its diagonal block of the Gram matrix
(skipped for q and k, whose errors pass through the softmax).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmserve.lite.quantizer import GroupQuant, check_group_size, fake_quantize, quantize_groups
from lmserve.model.config import ModelConfig


SCALE_FORMS = ("xw", "x")
ROUNDINGS = ("nearest", "gptq")
LOSSES = ("gram", "block")


@dataclass(slots=True)
class AwqSettings:
    w_bits: int = 4
    w_group_size: int = 128
    # 40 grid points and the full-Gram clip search: over the whole wikitext-2 test file the default
    # model's AWQ g64 recovers 51.9% of RTN's perplexity loss with them, 45.8% with AutoAWQ's 20
    # points and per-group blocks (docs/quantization.md); the search takes ~60 s instead of ~30
    n_grid: int = 40
    clip_search: bool = True
    max_shrink: float = 0.5       # clipping keeps at least this fraction of a group's range
    scale_form: str = "xw"        # xw: s = mean|x|^a / mean|w|^(1-a); x: AutoAWQ's s = mean|x|^a
    rounding: str = "nearest"     # nearest, or gptq (error-compensating, from the Gram matrix)
    sequential: bool = False      # statistics from the model whose earlier layers are quantized
    damp: float = 0.01            # GPTQ: Gram diagonal damping, a fraction of its mean
    clip_gram: str = "full"       # clip search error: block (diagonal Gram blocks) or full
    sink_weight: float = 1.0      # weight of each sample's first token (the attention sink) in G
    loss: str = "gram"            # scale search error of q/k/v and gate/up: gram (each linear's
                                  # output) or block (the attention / MLP output, lite/block_loss.py)
    block_samples: int = 4        # --loss block: calibration sequences kept to run the blocks on

    def __post_init__(self):
        if self.w_bits not in (4, 8):
            raise ValueError(f"--w-bits must be 4 or 8, got {self.w_bits}")
        if self.scale_form not in SCALE_FORMS:
            raise ValueError(f"--scale-form must be one of {', '.join(SCALE_FORMS)}, got {self.scale_form!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.clip_gram not in ("block", "full"):
            raise ValueError(f"--clip-gram must be block or full, got {self.clip_gram!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.block_samples < 1:
            raise ValueError(f"--block-samples must be at least 1, got {self.block_samples}")
        if self.sink_weight < 1.0:
            raise ValueError(f"--sink-weight must be at least 1, got {self.sink_weight}")
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"--damp must be in (0, 1), got {self.damp}")
        if self.n_grid < 1:
            raise ValueError(f"--search-grid must be at least 1, got {self.n_grid}")
        if not 0.0 < self.max_shrink <= 1.0:
            raise ValueError(f"--max-shrink must be in (0, 1], got {self.max_shrink}")


def output_error(dw: torch.Tensor, gram: torch.Tensor) -> float:
    """Sum over calibration tokens of |dW x|^2, i.e. tr(dW G dW^T)."""
    return float(((dw @ gram) * dw).sum())


def _weight_mean(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over output rows of |w| relative to its group's max |w|, per input channel."""
    g = w.abs().reshape(w.shape[0], -1, group_size)
    g = g / g.amax(-1, keepdim=True).clamp(min=1e-8)
    return g.reshape(w.shape).mean(0)


def tie_heads(v: torch.Tensor, gqa: tuple[int, int, int]) -> torch.Tensor:
    """[kv * group * d] per o_proj input -> the mean over the query heads sharing a KV head,
    repeated back: a scale that can be folded into the v_proj rows of that KV head."""
    kv, group, d = gqa
    return v.reshape(kv, group, d).mean(1, keepdim=True).expand(kv, group, d).reshape(-1)


def scale_grid(w: torch.Tensor, x_mean: torch.Tensor, st: AwqSettings,
               gqa: tuple[int, int, int] | None = None):
    """The candidate scales s [in] for the consumers' weights w [out, in], one per grid exponent
    (s = 1, plain RTN, is not among them), normalized so that max(s) * min(s) = 1."""
    w_mean = _weight_mean(w, st.w_group_size)
    x_mean = x_mean.clamp(min=1e-8)
    for i in range(st.n_grid):
        a = i / st.n_grid
        if st.scale_form == "x":
            s = x_mean.pow(a).clamp(min=1e-4)
        else:
            s = (x_mean.pow(a) / (w_mean.pow(1 - a) + 1e-4)).clamp(min=1e-4)
        if gqa is not None:
            s = tie_heads(s, gqa)
        yield s / (s.max() * s.min()).sqrt()


def search_scale(w: torch.Tensor, x_mean: torch.Tensor, gram: torch.Tensor, st: AwqSettings,
                 gqa: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, float, float]:
    """w: the consumers' weights stacked [out, in]. gqa: (kv heads, query heads per kv head,
    head dim) when the scale must be shared by query heads (o_proj under GQA).
    -> (s [in], error with s, error of plain RTN)."""
    rtn = output_error(fake_quantize(w, st.w_bits, st.w_group_size) - w, gram)
    best_s, best_err = torch.ones(w.shape[1]), rtn
    for s in scale_grid(w, x_mean, st, gqa):
        err = output_error(fake_quantize(w * s, st.w_bits, st.w_group_size) / s - w, gram)
        if err < best_err:
            best_s, best_err = s, err
    return best_s, best_err, rtn


def search_clip(w: torch.Tensor, gram: torch.Tensor, st: AwqSettings) -> torch.Tensor:
    """Per (output row, group) fraction of the range to keep, minimizing that group's share of
    the output error (the diagonal Gram block; cross-group terms are ignored). -> [out, groups]."""
    out, in_features = w.shape
    gs = st.w_group_size
    groups = in_features // gs
    blocks = torch.stack([gram[g * gs:(g + 1) * gs, g * gs:(g + 1) * gs] for g in range(groups)])
    wg = w.reshape(out, groups, gs)
    best = torch.full((out, groups), float("inf"))
    best_ratio = torch.ones(out, groups)
    steps = max(1, round(st.n_grid * (1 - st.max_shrink)))
    for i in range(steps + 1):
        ratio = 1.0 - i * (1 - st.max_shrink) / steps
        clip = torch.full((out, groups), ratio)
        dw = (fake_quantize(w, st.w_bits, gs, clip) - w).reshape(out, groups, gs)
        err = torch.einsum("ogi,gij,ogj->og", dw, blocks, dw)
        better = err < best
        best = torch.where(better, err, best)
        best_ratio = torch.where(better, clip, best_ratio)
    return best_ratio


def search_clip_full(w: torch.Tensor, gram: torch.Tensor, st: AwqSettings) -> torch.Tensor:
    """search_clip with the cross-group terms of the output error: starting from the diagonal-
    block answer, each group in turn takes, per output row, the ratio that minimizes the whole
    error tr(dW G dW^T) with the other groups' errors as they stand (one coordinate sweep)."""
    out, in_features = w.shape
    gs = st.w_group_size
    ratio = search_clip(w, gram, st)
    dw = fake_quantize(w, st.w_bits, gs, ratio) - w
    steps = max(1, round(st.n_grid * (1 - st.max_shrink)))
    for g in range(in_features // gs):
        cols = slice(g * gs, (g + 1) * gs)
        block = gram[cols, cols]
        cross = dw @ gram[:, cols] - dw[:, cols] @ block          # [out, gs]: the other groups'
        wg = w[:, cols]
        best = torch.full((out,), float("inf"))
        best_dw = dw[:, cols].clone()
        for i in range(steps + 1):
            r = torch.full((out, 1), 1.0 - i * (1 - st.max_shrink) / steps)
            d = fake_quantize(wg, st.w_bits, gs, r) - wg
            err = ((d @ block) * d).sum(-1) + 2 * (d * cross).sum(-1)
            better = err < best
            best = torch.where(better, err, best)
            best_dw = torch.where(better[:, None], d, best_dw)
            ratio[:, g] = torch.where(better, r[:, 0], ratio[:, g])
        dw[:, cols] = best_dw
    return ratio


def input_gram(stats: dict, sink_weight: float) -> torch.Tensor:
    """Per-token mean Gram matrix of one linear input, with each sample's first token counted
    sink_weight times: most tokens attend to that first token, so an error in its keys/values/
    hidden state reaches every later token, not just itself."""
    gram = stats["gram"]
    if sink_weight != 1.0:
        if "first" not in stats:
            raise ValueError("--sink-weight needs first-token statistics; these were recorded by an "
                             "older `lite calibrate`: calibrate again")
        gram = gram + (sink_weight - 1.0) * stats["first"]
    return gram / max(stats["tokens"], 1)


def scaled_gram(gram: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the inputs x / s that the scaled weights W diag(s) see."""
    inv = 1.0 / s
    return gram * inv[:, None] * inv[None, :]
