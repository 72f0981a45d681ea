"""config.json contents of real models, for `--load-format dummy` benchmarks at real sizes.

Written in each family's own config.json dialect (InternLM's `rotary`, InternLM2's legacy
`rope_scaling`...), so they go through the same parsers as a downloaded checkpoint would. Values are
those of the published checkpoints; where a base and a chat model differ only in eos ids, the
chat model's are used.
"""
from __future__ import annotations

from typing import Any


def _llama(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, **extra: Any):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, **extra}


NAMED_SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": _llama(4096, 11008, 32, 32, 32, 32000, rms_norm_eps=1e-5,
                        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                        torch_dtype="float16"),
    "llama2-13b": _llama(5120, 13824, 40, 40, 40, 32000, rms_norm_eps=1e-5,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         torch_dtype="float16"),
    "llama3-8b": _llama(4096, 14336, 32, 32, 8, 128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                        max_position_embeddings=8192, bos_token_id=128000,
                        eos_token_id=[128001, 128009], torch_dtype="bfloat16"),
    "smollm2-135m": _llama(576, 1536, 30, 9, 3, 49152, rms_norm_eps=1e-5, rope_theta=100000.0,
                           max_position_embeddings=8192, tie_word_embeddings=True,
                           bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16"),
    "qwen2-7b": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
                 "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "vocab_size": 152064, "rms_norm_eps": 1e-6,
                 "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                 "sliding_window": 131072, "use_sliding_window": False,
                 "tie_word_embeddings": False, "bos_token_id": 151643,
                 "eos_token_id": [151645, 151643], "torch_dtype": "bfloat16"},
    "internlm-chat-7b": {"architectures": ["InternLMForCausalLM"], "model_type": "internlm",
                         "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                         "num_attention_heads": 32, "vocab_size": 103168, "rms_norm_eps": 1e-6,
                         "max_position_embeddings": 2048, "bias": True, "bos_token_id": 1,
                         "eos_token_id": 2, "torch_dtype": "float16"},
    "internlm-chat-20b": {"architectures": ["InternLMForCausalLM"], "model_type": "internlm",
                          "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 60,
                          "num_attention_heads": 40, "num_key_value_heads": 40,
                          "vocab_size": 103168, "rms_norm_eps": 1e-6,
                          "max_position_embeddings": 4096, "bias": False,
                          "rotary": {"base": 10000, "type": "dynamic"}, "bos_token_id": 1,
                          "eos_token_id": 2, "torch_dtype": "bfloat16"},
    "internlm2-chat-7b": {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
                          "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "num_key_value_heads": 8,
                          "vocab_size": 92544, "rms_norm_eps": 1e-5, "rope_theta": 1000000,
                          "rope_scaling": {"type": "dynamic", "factor": 2.0},
                          "max_position_embeddings": 32768, "bias": False,
                          "bos_token_id": 1, "eos_token_id": [2, 92542], "torch_dtype": "bfloat16"},
    "baichuan2-7b": {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
                     "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "vocab_size": 125696, "rms_norm_eps": 1e-6,
                     "max_position_embeddings": 4096, "model_max_length": 4096,
                     "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"},
}
