"""InternLM, InternLM2 and Baichuan2: a tiny HF Llama re-packed into each family's on-disk layout must
load back into the original canonical tensors, and a transformers Llama built from them must give the
original logits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loader_testing import (canonical_state, hf_model_from, llama_config_dict, logits, streamed,
                            tiny_model, write_checkpoint)

from lmserve.model.loader import load_model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from lmserve.model.loader import default_tokenizer
    folder = tmp_path_factory.mktemp("tokenizer")
    default_tokenizer().save_pretrained(folder)
    return folder


def assert_same_tensors(loaded: dict, expected: dict) -> None:
    assert set(loaded) == set(expected), set(loaded) ^ set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_internlm_with_qkv_and_o_bias(tmp_path, tokenizer_dir):
    # InternLM(1) uses HF-Llama names, with biases on q, k, v and o (HF Llama's attention_bias)
    original = tiny_model("llama", attention_bias=True, num_key_value_heads=4)
    state = canonical_state(original)
    on_disk = dict(state)
    # old checkpoints saved the rotary buffer; it must be skipped, not reported as unknown
    on_disk["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    config = llama_config_dict(original, architectures=["InternLMForCausalLM"], model_type="internlm",
                               bias=True, rotary={"base": 10000, "type": "dynamic"})
    del config["num_key_value_heads"]          # InternLM configs do not have it
    loaded = load_model(write_checkpoint(tmp_path / "internlm", config, on_disk, tokenizer_dir))
    c = loaded.config
    assert (c.family, c.qkv_bias, c.o_bias, c.num_kv_heads) == ("internlm", True, True, 4)
    assert c.rope_theta == 10000.0 and c.rope_scaling == {"rope_type": "dynamic", "factor": 1.0}
    canonical = streamed(loaded)
    assert_same_tensors(canonical, state)
    assert torch.equal(logits(hf_model_from(c, canonical)), logits(original))


def pack_internlm2(state: dict, heads: int, kv_heads: int) -> dict:
    """HF-Llama tensors -> InternLM2's names, with q/k/v packed per kv group into wqkv."""
    out = {"model.tok_embeddings.weight": state["model.embed_tokens.weight"],
           "model.norm.weight": state["model.norm.weight"], "output.weight": state["lm_head.weight"]}
    layers = {k.split(".")[2] for k in state if k.startswith("model.layers.")}
    for i in sorted(layers):
        p, new = f"model.layers.{i}.", f"model.layers.{i}."
        q, k, v = (state[p + f"self_attn.{x}_proj.weight"] for x in "qkv")
        hidden = q.shape[1]
        head_dim = q.shape[0] // heads
        groups = heads // kv_heads
        wqkv = torch.cat([q.reshape(kv_heads, groups, head_dim, hidden),
                          k.reshape(kv_heads, 1, head_dim, hidden),
                          v.reshape(kv_heads, 1, head_dim, hidden)], dim=1)
        out[new + "attention.wqkv.weight"] = wqkv.reshape(-1, hidden)
        out[new + "attention.wo.weight"] = state[p + "self_attn.o_proj.weight"]
        out[new + "attention_norm.weight"] = state[p + "input_layernorm.weight"]
        out[new + "ffn_norm.weight"] = state[p + "post_attention_layernorm.weight"]
        for ours, theirs in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            out[new + f"feed_forward.{theirs}.weight"] = state[p + f"mlp.{ours}_proj.weight"]
    return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 1), (4, 4)])
def test_internlm2_packed_wqkv(tmp_path, tokenizer_dir, heads, kv_heads):
    original = tiny_model("llama", num_attention_heads=heads, num_key_value_heads=kv_heads)
    state = canonical_state(original)
    config = llama_config_dict(original, architectures=["InternLM2ForCausalLM"],
                               model_type="internlm2", bias=False, rope_theta=1000000,
                               rope_scaling={"type": "dynamic", "factor": 2.0})
    folder = write_checkpoint(tmp_path / "internlm2", config, pack_internlm2(state, heads, kv_heads),
                              tokenizer_dir, generation={"eos_token_id": [2, 92542]})
    loaded = load_model(folder)
    c = loaded.config
    assert (c.family, c.num_heads, c.num_kv_heads, c.qkv_bias) == ("internlm2", heads, kv_heads, False)
    assert c.rope_theta == 1e6 and c.rope_scaling == {"rope_type": "dynamic", "factor": 2.0}
    assert c.eos_token_ids == [2, 92542]
    canonical = streamed(loaded)
    assert_same_tensors(canonical, state)
    # logits with the original rope settings (dynamic NTK only differs beyond max positions)
    c.rope_theta, c.rope_scaling = original.config.rope_parameters["rope_theta"], None
    assert torch.equal(logits(hf_model_from(c, canonical)), logits(original))


def test_baichuan2_w_pack_and_norm_head(tmp_path, tokenizer_dir):
    original = tiny_model("llama", num_key_value_heads=4)
    state = canonical_state(original)
    on_disk = {k: v for k, v in state.items() if ".self_attn." not in k or "o_proj" in k}
    for i in range(original.config.num_hidden_layers):
        p = f"model.layers.{i}.self_attn."
        on_disk[p + "W_pack.weight"] = torch.cat([state[p + f"{x}_proj.weight"] for x in "qkv"])
    assert state["lm_head.weight"].norm(dim=-1).sub(1).abs().min() > 0.1   # really unnormalized
    config = llama_config_dict(original, architectures=["BaichuanForCausalLM"], model_type="baichuan",
                               model_max_length=128)
    del config["num_key_value_heads"], config["max_position_embeddings"]
    loaded = load_model(write_checkpoint(tmp_path / "baichuan2", config, on_disk, tokenizer_dir))
    c = loaded.config
    assert (c.family, c.num_kv_heads, c.max_position_embeddings, c.tie_word_embeddings) == \
        ("baichuan2", 4, 128, False)
    canonical = streamed(loaded)
    head = F.normalize(state["lm_head.weight"], dim=-1)
    torch.testing.assert_close(canonical["lm_head.weight"].norm(dim=-1), torch.ones(c.vocab_size))
    assert torch.equal(canonical["lm_head.weight"], head)
    assert_same_tensors(canonical, {**state, "lm_head.weight": head})
    # Baichuan2's NormHead normalizes at the first forward; the reference does the same by hand
    with torch.no_grad():
        original.lm_head.weight.copy_(head)
    assert torch.equal(logits(hf_model_from(c, canonical)), logits(original))


def test_baichuan_13b_alibi_is_rejected(tmp_path):
    config = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": 5120,
              "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 40,
              "vocab_size": 125696}
    folder = write_checkpoint(tmp_path / "b13", config, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="ALiBi"):
        load_model(folder)
