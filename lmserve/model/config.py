"""The one model description every loader produces and the decoder consumes.

Every family (Llama, Mistral, Qwen2, InternLM, InternLM2, Baichuan2) is described in Llama terms;
the differences that matter to the math are flags (biases, rope scaling, tied head, norm head).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ModelConfig:
    family: str                      # llama | mistral | qwen2 | internlm | internlm2 | baichuan2
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None   # HF's dict: rope_type linear|dynamic|llama3|yarn ...
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False           # Qwen2, InternLM
    o_bias: bool = False             # InternLM
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    torch_dtype: str = "float32"     # the checkpoint's own dtype, used for "auto"
    quantization: dict[str, Any] | None = None   # e.g. {"quant_method": "awq", "bits": 4, ...}

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model config: num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim
