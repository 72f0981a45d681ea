"""GGUF files (llama.cpp's format) -> canonical HF-Llama tensors, config, tokenizer and chat template.

llama.cpp stores q/k rows of Llama-style models permuted for its interleaved rotary embedding; we
undo that so every consumer sees Hugging Face's rotate-half order. Weights are dequantized to
float32 one tensor at a time, or, for Q4_0/Q4_1/Q8_0 linear weights when asked, handed out as raw
ggml blocks (GGUFRawWeight) with the same row order fix applied to the blocks.
"""
from __future__ import annotations

import logging
import os
import re
from functools import partial
from typing import Any, Iterator

import numpy as np
import torch

from lmserve.model.config import ModelConfig
from lmserve.model.gguf_dequant import dequantize, supported_types
from lmserve.model.gguf_file import GGUFFile, GGUFTensorInfo
from lmserve.model.gguf_raw import RAW_BLOCK_SIZES, GGUFRawWeight
from lmserve.model.loaded_model import LoadedModel, Weight, checked_stream

logger = logging.getLogger(__name__)

# general.architecture -> (our family, whether llama.cpp permuted q/k rows). Qwen2 uses NeoX-style
# rotary in llama.cpp, so its rows are stored in HF order; InternLM2's converter splits wqkv and
# permutes like Llama.
GGUF_ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False),
                      "internlm2": ("internlm2", True)}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_LINEAR = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
# GGUF general.sampling.* (llama.cpp's recommended sampler settings) -> our generation defaults
_SAMPLING_KEYS = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                  "penalty_repeat": "repetition_penalty"}


def load_gguf(path: str, keep_gguf_quantized: bool = False) -> LoadedModel:
    gguf = GGUFFile(path)
    arch = gguf.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; supported: "
                         f"{', '.join(sorted(GGUF_ARCHITECTURES))}")
    _check_tensor_types(gguf)
    config = gguf_config(gguf)
    for tensor_name in gguf.tensors:     # fail now, not half-way through a stream
        try:
            canonical_gguf_name(tensor_name)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    raw_types = _raw_types(gguf) if keep_gguf_quantized else []
    if raw_types:
        config.quantization = {"quant_method": "gguf", "raw_qtypes": raw_types}
    tokenizer = load_gguf_tokenizer(path)
    template = gguf.get("tokenizer.chat_template") or getattr(tokenizer, "chat_template", None)
    defaults = {ours: _round_f32(gguf.get(f"general.sampling.{key}"))
                for key, ours in _SAMPLING_KEYS.items() if gguf.get(f"general.sampling.{key}") is not None}
    stream = partial(_checked_weights, gguf, config, keep_gguf_quantized, path)
    name = os.path.splitext(os.path.basename(path))[0]
    return LoadedModel(config=config, weights=stream, tokenizer=tokenizer, chat_template=template,
                       generation_defaults=defaults, model_path=path, model_name=name)


def gguf_config(gguf: GGUFFile) -> ModelConfig:
    """ModelConfig from llama.cpp's `{arch}.*` metadata keys."""
    arch = gguf.get("general.architecture")
    family, _ = GGUF_ARCHITECTURES[arch]

    def key(suffix: str, default: Any = None, required: bool = False) -> Any:
        value = gguf.get(f"{arch}.{suffix}", default)
        if value is None and required:
            raise ValueError(f"{gguf.path}: GGUF metadata key {arch}.{suffix} is missing")
        return value

    if "rope_freqs.weight" in gguf.tensors:
        # Llama 3.1-style rope scaling is stored as a frequency tensor, not as parameters we could
        # put into rope_scaling; loading it without it would silently change the model.
        raise ValueError(f"{gguf.path}: GGUF files with a rope_freqs tensor (Llama 3.1+ rope "
                         f"scaling) are not supported; load the Hugging Face checkpoint instead")
    hidden = key("embedding_length", required=True)
    heads = key("attention.head_count", required=True)
    head_dim = key("attention.key_length") or hidden // heads
    rot_dim = key("rope.dimension_count") or head_dim
    if rot_dim != head_dim:
        raise ValueError(f"{gguf.path}: partial rotary embedding ({rot_dim} of {head_dim} dims) is "
                         f"not supported")
    vocab = key("vocab_size") or len(gguf.get("tokenizer.ggml.tokens", [])) or \
        gguf.tensors["token_embd.weight"].shape[0]
    eos = [gguf.get(f"tokenizer.ggml.{k}") for k in ("eos_token_id", "eot_token_id", "eom_token_id")]
    return ModelConfig(
        family=family, vocab_size=vocab, hidden_size=hidden,
        intermediate_size=key("feed_forward_length", required=True),
        num_layers=key("block_count", required=True), num_heads=heads,
        num_kv_heads=key("attention.head_count_kv") or heads, head_dim=head_dim,
        rms_norm_eps=_round_f32(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_round_f32(key("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(key), max_position_embeddings=key("context_length", 4096),
        tie_word_embeddings="output.weight" not in gguf.tensors,
        qkv_bias="blk.0.attn_q.bias" in gguf.tensors, o_bias="blk.0.attn_output.bias" in gguf.tensors,
        bos_token_id=gguf.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=list(dict.fromkeys(e for e in eos if e is not None)),
        torch_dtype="float32")


def load_gguf_tokenizer(path: str):
    # PreTrainedTokenizerFast rather than AutoTokenizer: the latter also builds a model config from
    # the file with gguf.GGUFReader, which costs ~5 s here and is not needed for the tokenizer.
    from transformers import PreTrainedTokenizerFast
    folder, name = os.path.split(os.path.abspath(path))
    return PreTrainedTokenizerFast.from_pretrained(folder, gguf_file=name)


def canonical_gguf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER_RE.match(name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        raise ValueError(f"GGUF tensor {name!r} has no counterpart in a Llama-family model")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def unpermute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (rows may be floats or raw ggml block rows).

    llama.cpp stores each head's rows as pairs (i, i + head_dim/2) interleaved; HF keeps the two
    halves apart. numpy rather than torch for the reason given in gguf_dequant.py.
    """
    head_dim = rows.shape[0] // n_heads
    rest = rows.shape[1:]
    paired = rows.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2)
    return np.ascontiguousarray(paired).reshape(rows.shape)


def _checked_weights(gguf: GGUFFile, config: ModelConfig, keep_quantized: bool,
                     source: str) -> Iterator[tuple[str, Weight]]:
    return checked_stream(_weights(gguf, config, keep_quantized), config, source)


def _weights(gguf: GGUFFile, config: ModelConfig, keep_quantized: bool) -> Iterator[tuple[str, Weight]]:
    _, permuted = GGUF_ARCHITECTURES[gguf.get("general.architecture")]
    for info in gguf.tensors.values():
        name = canonical_gguf_name(info.name)
        heads = None
        if permuted and ".attn_q." in info.name:
            heads = config.num_heads
        elif permuted and ".attn_k." in info.name:
            heads = config.num_kv_heads
        if keep_quantized and _keeps_raw(info):
            # a copy either way, so that the tensor never aliases the memory-mapped file
            data = unpermute_rows(gguf.raw(info.name), heads) if heads else gguf.raw(info.name).copy()
            yield name, GGUFRawWeight(info.qtype.name, torch.from_numpy(data), info.shape)
            continue
        values = dequantize(gguf.raw(info.name), info.qtype, info.shape)
        yield name, torch.from_numpy(unpermute_rows(values, heads) if heads else values)


def _keeps_raw(info: GGUFTensorInfo) -> bool:
    if info.qtype.name not in RAW_BLOCK_SIZES or len(info.shape) != 2:
        return False
    m = _LAYER_RE.match(info.name)
    # the embedding too: its rows are looked up by dequantizing only the rows asked for, and when
    # tied it is also the output head, the largest single matmul of a small model
    return info.name in ("output.weight", "token_embd.weight") or (
        m is not None and m.group(2) in _LINEAR and m.group(3) == "weight")


def _raw_types(gguf: GGUFFile) -> list[str]:
    return sorted({i.qtype.name for i in gguf.tensors.values() if _keeps_raw(i)})


def _check_tensor_types(gguf: GGUFFile) -> None:
    ok = set(supported_types())
    bad = {i.qtype.name: i.name for i in gguf.tensors.values() if i.qtype.name not in ok}
    if bad:
        qtype, example = next(iter(bad.items()))
        raise ValueError(f"{gguf.path}: tensor {example} has ggml type {qtype}, which cannot be "
                         f"dequantized by the installed gguf package (unsupported: {sorted(bad)}); "
                         f"supported types: {', '.join(sorted(ok))}")


def _rope_scaling(key) -> dict[str, Any] | None:
    kind = key("rope.scaling.type")
    factor = key("rope.scaling.factor")
    if kind in (None, "none") or not factor:
        return None
    if kind not in ("linear", "yarn"):
        raise ValueError(f"GGUF rope scaling type {kind!r} is not supported (linear, yarn are)")
    scaling: dict[str, Any] = {"rope_type": kind, "factor": _round_f32(factor)}
    original = key("rope.scaling.original_context_length")
    if original:
        scaling["original_max_position_embeddings"] = original
    return scaling


def _round_f32(value):
    # GGUF stores floats as float32: 1e-5 comes back as 9.999999747e-06. Seven significant digits
    # give back the number the model was configured with.
    return float(f"{value:.7g}") if isinstance(value, float) else value
