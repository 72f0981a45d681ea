"""One decoder for the whole Llama family; per-family differences arrive as ModelConfig flags.

Weights arrive under canonical HF-Llama names (the loader maps each family onto them) and are packed
here: q/k/v into one projection, gate/up into another.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from lmserve.kernels.kv_quant import QuantKVCache
from lmserve.kernels.quant_weight import QuantWeight
from lmserve.model.config import ModelConfig
from lmserve.model.gguf_raw import GGUFRawWeight
from lmserve.nn.activation import silu_and_mul
from lmserve.nn.attention import AttentionMetadata, PagedAttention
from lmserve.nn.embedding import ParallelLMHead, VocabParallelEmbedding
from lmserve.nn.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from lmserve.nn.norm import RMSNorm
from lmserve.nn.parallel import ParallelContext
from lmserve.nn.rotary import RotaryEmbedding, apply_rotary_packed


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, parallel: ParallelContext):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.qkv_proj = QKVParallelLinear(h, d, cfg.num_heads, cfg.num_kv_heads, cfg.qkv_bias, dtype, parallel)
        self.o_proj = RowParallelLinear(cfg.num_heads * d, h, cfg.o_bias, dtype, parallel)
        self.gate_up_proj = MergedColumnParallelLinear(h, [cfg.intermediate_size] * 2, False, dtype, parallel)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, h, False, dtype, parallel)
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps, dtype)
        self.heads, self.kv_heads = self.qkv_proj.local_heads, self.qkv_proj.local_kv_heads
        self.head_dim = d
        self.attn = PagedAttention(self.heads, self.kv_heads, d)

    def forward(self, cos_sin, hidden, residual, kv_cache, meta: AttentionMetadata):
        hidden, residual = self.input_layernorm(hidden, residual)
        qkv = self.qkv_proj(hidden)
        q, k, v = apply_rotary_packed(cos_sin, qkv, self.heads, self.kv_heads, self.head_dim)
        attn = self.attn(q, k, v, kv_cache, meta)
        hidden = self.o_proj(attn.reshape(hidden.shape[0], self.heads * self.head_dim))
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        hidden = self.down_proj(silu_and_mul(self.gate_up_proj(hidden)))
        return hidden, residual


def _stack_serves(meta: AttentionMetadata, tokens: int, kv_caches) -> bool:
    """A pure decode step: one token per sequence, no prompt chunk."""
    return meta.decode_rows is not None and not meta.prefills and len(meta.decode_rows) == tokens


_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_SHARDS = {
    "self_attn.q_proj": ("qkv_proj", "q"), "self_attn.k_proj": ("qkv_proj", "k"),
    "self_attn.v_proj": ("qkv_proj", "v"), "self_attn.o_proj": ("o_proj", None),
    "mlp.gate_proj": ("gate_up_proj", 0), "mlp.up_proj": ("gate_up_proj", 1),
    "mlp.down_proj": ("down_proj", None),
}


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, max_positions: int,
                 parallel: ParallelContext = ParallelContext()):
        super().__init__()
        self.cfg, self.dtype, self.parallel = cfg, dtype, parallel
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, dtype, parallel)
        self.rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling,
                                      cfg.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(cfg, dtype, parallel)
                                    for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, dtype, parallel,
                                      tied_to=self.embed_tokens if cfg.tie_word_embeddings else None)
        # set by the model runner on CPU (kernels/cpu_decode_stack.py): all layers of a decode
        # step in one C++ call, bit-identical to the modules; None runs module by module
        self.decode_stack = None
        self._flat_caches = None        # (the kv_caches list, its flattened form for the stack)

    @property
    def num_local_kv_heads(self) -> int:
        return self.layers[0].kv_heads

    def forward(self, input_ids, positions, kv_caches, meta: AttentionMetadata) -> torch.Tensor:
        """Returns the final hidden states [T, hidden]; `compute_logits` turns chosen rows into logits."""
        hidden, residual = self.embed_tokens(input_ids), None
        cos_sin = self.rotary.cos_sin(positions, self.dtype)
        if self.decode_stack is not None and _stack_serves(meta, hidden.shape[0], kv_caches):
            hidden, residual = self._stack_forward(hidden, cos_sin, kv_caches, meta)
        else:
            for layer, kv_cache in zip(self.layers, kv_caches):
                hidden, residual = layer(cos_sin, hidden, residual, kv_cache, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def _stack_forward(self, hidden, cos_sin, kv_caches, meta: AttentionMetadata):
        t = hidden.shape[0]
        cos, sin = cos_sin
        caches, bits, rotation = self._stack_caches(kv_caches)
        return self.decode_stack.forward(
            hidden, cos.view(t, -1), sin.view(t, -1), caches, bits, rotation, meta.slot_mapping,
            meta.decode_block_tables.long().contiguous(), meta.decode_context_lens.long().contiguous())

    def _stack_caches(self, kv_caches):
        """The caches as the stack takes them (flat tensors, bits, rotation); the runner passes the
        same list every step, so it is flattened once."""
        cached = self._flat_caches
        if cached is not None and cached[0] is kv_caches:
            return cached[1]
        if isinstance(kv_caches[0], QuantKVCache):
            flat = ([x for c in kv_caches for x in (c.k, c.v, c.k_scale_zero, c.v_scale_zero)],
                    kv_caches[0].bits, kv_caches[0].rotation)
        else:
            flat = ([x for c in kv_caches for x in c], 0, None)
        self._flat_caches = (kv_caches, flat)
        return flat

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # ---- weights ------------------------------------------------------------------------------
    def load_weights(self, weights) -> None:
        """Consume (canonical name, tensor or QuantWeight) pairs; every parameter must be found."""
        seen_norm = False
        for name, tensor in weights:
            if isinstance(tensor, GGUFRawWeight):    # served at its own bit width, never as float
                tensor = QuantWeight.from_gguf_blocks(tensor.qtype, tensor.data, tensor.shape)
            m = _LAYER_KEY.match(name)
            if m:
                layer = self.layers[int(m.group(1))]
                part, kind = m.group(2), m.group(3)
                if part in ("input_layernorm", "post_attention_layernorm"):
                    getattr(layer, part).weight.data.copy_(tensor)
                elif part in _SHARDS:
                    module, shard = _SHARDS[part]
                    getattr(layer, module).load_shard(shard, tensor, kind)
                else:
                    raise ValueError(f"unexpected weight {name}")
            elif name == "model.embed_tokens.weight":
                self.embed_tokens.load(tensor)
            elif name == "model.norm.weight":
                self.norm.weight.data.copy_(tensor)
                seen_norm = True
            elif name == "lm_head.weight":
                if not self.cfg.tie_word_embeddings:
                    self.lm_head.load(tensor)
            else:
                raise ValueError(f"unexpected weight {name}")
        self._check_complete(seen_norm)

    def _check_complete(self, seen_norm: bool) -> None:
        if self.embed_tokens.weight is None:
            raise ValueError("checkpoint has no model.embed_tokens.weight")
        if self.lm_head.weight is None:
            raise ValueError("checkpoint has no lm_head.weight (and the config does not tie it)")
        if not seen_norm:
            raise ValueError("checkpoint has no model.norm.weight")
        for i, layer in enumerate(self.layers):
            for part in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
                getattr(layer, part).check_loaded(f"model.layers.{i}.{part}")
