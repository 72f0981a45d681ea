"""Rotary position embedding (HF's rotate-half layout) with the rope-scaling variants of HF configs.

cos/sin are precomputed once for every position up to the session length, so a step only gathers
rows by position. Variants: default, linear, dynamic (NTK; exact up to the original context, then
scaled for the whole extended length), llama3, yarn.
"""
from __future__ import annotations

import math

import torch

from lmserve.kernels.cpu_ops import rotary_ref
from lmserve.kernels.dispatch import rotary_qk_inplace
from torch import nn


def _inv_freq(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_ctx = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn(dim: int, base: float, s: dict, max_pos: int) -> tuple[torch.Tensor, float]:
    factor = s["factor"]
    old_ctx = s.get("original_max_position_embeddings") or max_pos
    mscale = s.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(old_ctx / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    inv_interp, inv_extrap = 1.0 / (factor * pos_freqs), 1.0 / pos_freqs
    return inv_interp * (1 - extrapolation) + inv_extrap * extrapolation, mscale


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, base: float, scaling: dict | None,
                 original_max_positions: int):
        super().__init__()
        scaling = dict(scaling or {})
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        attention_factor = 1.0
        inv_freq = _inv_freq(head_dim, base)
        if kind == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif kind == "dynamic" and max_positions > original_max_positions:
            factor = scaling["factor"]
            base = base * ((factor * max_positions / original_max_positions) - (factor - 1)) ** (
                head_dim / (head_dim - 2))
            inv_freq = _inv_freq(head_dim, base)
        elif kind == "llama3":
            inv_freq = _llama3(inv_freq, scaling)
        elif kind == "yarn":
            inv_freq, attention_factor = _yarn(head_dim, base, scaling, original_max_positions)
        elif kind not in ("default", "dynamic"):
            raise ValueError(f"unsupported rope scaling type {kind!r}; supported: linear, dynamic, llama3, yarn")
        pos = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * attention_factor, persistent=False)
        self.register_buffer("sin", emb.sin() * attention_factor, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for this step's positions, shaped to broadcast over heads; gathered once per step."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


def apply_rotary(cos_sin: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor, k: torch.Tensor):
    """q: [T, H, D], k: [T, KV, D]; returns both rotated, in their own dtype."""
    cos, sin = cos_sin
    return rotary_ref(q, cos, sin), rotary_ref(k, cos, sin)


def apply_rotary_packed(cos_sin: tuple[torch.Tensor, torch.Tensor], qkv: torch.Tensor,
                        q_heads: int, kv_heads: int, head_dim: int):
    """Split a packed [T, (H + 2 KV) * D] projection into rotated q, rotated k and v views.

    The fused kernel rotates q and k where they lie (qkv is a fresh matmul output, never shared).
    """
    t = qkv.shape[0]
    q_size, kv_size = q_heads * head_dim, kv_heads * head_dim
    rotated = rotary_qk_inplace(qkv, q_heads, kv_heads, head_dim, *cos_sin)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q, k, v = q.view(t, q_heads, head_dim), k.view(t, kv_heads, head_dim), v.view(t, kv_heads, head_dim)
    if not rotated:
        q, k = apply_rotary(cos_sin, q, k)
    return q, k, v
