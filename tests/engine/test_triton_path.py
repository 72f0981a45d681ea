"""The engine's CUDA path (kernels.dispatch and nn.attention_triton) run end to end on CPU, with
the Triton kernels under Triton's interpreter: greedy tokens equal transformers' on a tiny model,
through chunked prefill, cached-prefix chunks, batched decode and split-K decode."""
from __future__ import annotations

import sys

import pytest

from lmserve.config import GenerationConfig
from lmserve.kernels import dispatch
from lmserve.model.loader import load_model
from lmserve.nn import attention
from tests.engine.helpers import hf_greedy, make_engine, run_all
from tests.kernels.triton_testing import interpreted, interpreter, requires_triton  # noqa: F401
from tests.model.loader_testing import tiny_model

KERNEL_MODULES = ("triton_rms_norm", "triton_rotary", "triton_silu_and_mul", "triton_store_kv",
                  "triton_paged_attention", "triton_prefill_attention", "triton_quant_linear")
PROMPTS = [[4, 8], list(range(10, 40)), [7] * 19]
MAX_NEW = 4


@pytest.fixture
def triton_path_on_cpu(monkeypatch, interpreter):
    """Make the nn layers take their CUDA branch for CPU tensors, with interpreted kernels."""
    saved = {name: sys.modules.get(name) for name in
             ["lmserve.nn.attention_triton"] + [f"lmserve.kernels.{m}" for m in KERNEL_MODULES]}
    for m in KERNEL_MODULES:
        sys.modules[f"lmserve.kernels.{m}"] = interpreted(m)
    sys.modules.pop("lmserve.nn.attention_triton", None)
    # decode contexts reach 33 tokens (tables 40 wide): a 32-token partition makes decode split
    monkeypatch.setattr(interpreted("triton_paged_attention"), "PARTITION", 32)
    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)
    monkeypatch.setattr(attention, "use_triton", lambda *tensors: True)
    calls = []
    real = interpreted("triton_paged_attention").paged_decode_attention_triton
    monkeypatch.setattr(interpreted("triton_paged_attention"), "paged_decode_attention_triton",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    yield calls
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


@requires_triton
def test_engine_on_the_triton_path_equals_transformers(triton_path_on_cpu, tmp_path, default_loaded):
    model = tiny_model("llama", seed=3)                 # GQA
    model.generation_config.eos_token_id = None
    model.save_pretrained(tmp_path)
    default_loaded.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    loaded.config.eos_token_ids = []
    refs = [hf_greedy(model, p, MAX_NEW, set()) for p in PROMPTS]
    engine = make_engine(loaded, num_blocks=64, cache_block_seq_len=8, max_prefill_token_num=16)
    outs = run_all(engine, PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW))
    assert triton_path_on_cpu, "the Triton decode kernel was never called"
    assert [o.token_ids for o in outs] == refs
