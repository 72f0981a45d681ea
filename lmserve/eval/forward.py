"""The serving model run directly over one token window, without the scheduler: for perplexity
and calibration, so that quantized checkpoints are measured by the very code that serves them.

    scorer = DirectModel.load("./model-4bit")
    logprobs = scorer.token_logprobs(ids)       # log p(ids[t + 1] | ids[:t + 1])
"""
from __future__ import annotations

import logging

import torch

from lmserve.config import EngineConfig
from lmserve.kernels.kv_quant import QuantKVCache, bytes_per_token_head
from lmserve.model.llama import LlamaForCausalLM
from lmserve.nn.attention import AttentionMetadata, PrefillChunk

logger = logging.getLogger(__name__)


class DirectModel:
    """LlamaForCausalLM in float32 on CPU with a private KV cache sized for one window.

    quant_policy 8 / 4 gives it an int8 / int4 KV cache (kv_rotation as the engine's
    --kv-rotation): attention then reads every K/V row quantized and dequantized, as the
    engine's decode steps read them from its cache, so perplexity measures the served model.
    """

    def __init__(self, loaded, max_tokens: int = 2048, quant_policy: int = 0, kv_rotation: str = "auto"):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        kv_cfg = EngineConfig(quant_policy=quant_policy, kv_rotation=kv_rotation)   # checks both
        cfg = loaded.config
        self.loaded, self.config, self.max_tokens = loaded, cfg, max_tokens
        self.quant_policy, self.kv_rotated = quant_policy, kv_cfg.kv_rotated and quant_policy != 0
        self.tokenizer = loaded.tokenizer
        self.model = LlamaForCausalLM(cfg, torch.float32, max_tokens)
        self.model.load_weights(loaded.weights())
        self.model.eval()
        kv = self.model.num_local_kv_heads
        # one block as long as the window: a fresh prefill attends to this window's own k/v (as
        # quantized when the cache is), so the cache's contents between windows do not matter
        if quant_policy:
            self.kv_caches = [QuantKVCache.allocate(1, max_tokens, kv, cfg.head_dim, quant_policy,
                                                    kv_cfg.kv_rotated) for _ in range(cfg.num_layers)]
        else:
            shape = (1, max_tokens, kv, cfg.head_dim)
            self.kv_caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_layers)]

    @classmethod
    def load(cls, model_path: str | None, max_tokens: int = 2048, low_bit_gguf: bool = True,
             load_format: str = "auto", quant_policy: int = 0, kv_rotation: str = "auto") -> DirectModel:
        """low_bit_gguf: keep a GGUF's Q4/Q8 blocks low-bit, as the CPU engine serves them."""
        from lmserve.model.loader import load_model
        return cls(load_model(model_path, load_format=load_format, keep_gguf_quantized=low_bit_gguf),
                   max_tokens, quant_policy, kv_rotation)

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token as the engine would hold them (float16 when not quantized)."""
        d, layers = self.config.head_dim, self.config.num_layers
        per_head = bytes_per_token_head(d, self.quant_policy) if self.quant_policy else 2 * d
        return 2 * layers * self.model.num_local_kv_heads * per_head

    @torch.inference_mode()
    def hidden_states(self, ids) -> torch.Tensor:
        """Final normed hidden states [T, hidden] of one sequence that starts from an empty cache."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        n = ids.numel()
        if not 0 < n <= self.max_tokens:
            raise ValueError(f"a window must hold 1..{self.max_tokens} tokens, got {n}")
        meta = AttentionMetadata(slot_mapping=torch.arange(n),
                                 prefills=[PrefillChunk(0, n, n, torch.zeros(1, dtype=torch.long))])
        return self.model(ids, torch.arange(n), self.kv_caches, meta)

    @torch.inference_mode()
    def token_logprobs(self, ids) -> torch.Tensor:
        """fp32 [T - 1]: log-probability of each token given the ones before it in the window."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        hidden = self.hidden_states(ids)
        out = torch.empty(ids.numel() - 1)
        # logits over a 50k vocabulary are the largest tensor; 256 rows at a time bound the memory
        for start in range(0, ids.numel() - 1, 256):
            end = min(start + 256, ids.numel() - 1)
            logits = self.model.compute_logits(hidden[start:end]).float()
            logp = torch.log_softmax(logits, dim=-1)
            out[start:end] = logp.gather(1, ids[start + 1:end + 1, None])[:, 0]
        return out

    def weight_bytes(self) -> int:
        """Bytes the weights take in memory as loaded (low-bit weights at their packed size)."""
        return model_weight_bytes(self.model)


def model_weight_bytes(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0

    def add(t) -> None:
        nonlocal total
        if t is None or id(t) in seen:
            return
        seen.add(id(t))
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        else:                       # QuantWeight / Int8Weight: their own packed size
            total += t.nbytes

    for module in model.modules():
        for name in ("weight", "bias", "_weight"):
            value = module.__dict__.get(name, None)
            if value is None and name in module._parameters:
                value = module._parameters[name]
            add(value)
    return total
