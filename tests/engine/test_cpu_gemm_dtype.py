"""--cpu-gemm-dtype: the low-bit matmuls above decode size run in bf16 (bfloat16, fast with AMX) or
as three bf16 products of split halves (bf16x3, close to fp32)."""
from __future__ import annotations

import pytest

from lmserve.config import EngineConfig, GenerationConfig
from tests.conftest import requires_default_model


def test_the_flag_is_validated_with_its_name():
    with pytest.raises(ValueError, match="--cpu-gemm-dtype must be float32, bfloat16 or bf16x3"):
        EngineConfig(cpu_gemm_dtype="float16")


def _greedy(engine, prompts: list[list[int]], new_tokens: int) -> dict[str, list[int]]:
    gen = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, gen)
    answers = {}
    while engine.has_work():
        for out in engine.step():
            if out.finished:
                answers[out.request_id] = out.token_ids
    return answers


def _gemm_dtypes(engine) -> set[str]:
    from lmserve.nn.linear import LinearBase
    return {m.cpu_gemm_dtype for m in engine.runner.model.modules() if isinstance(m, LinearBase)}


@requires_default_model
def test_bf16_gemm_reaches_every_low_bit_matmul_and_keeps_a_clear_greedy_answer():
    from lmserve.engine.engine import Engine
    from lmserve.model.loader import load_model
    loaded = load_model(None, keep_gguf_quantized=True)
    prompt = loaded.tokenizer.encode("The capital of France is")
    answers = {}
    for dtype in ("float32", "bfloat16"):
        engine = Engine(loaded, EngineConfig(device="cpu", num_blocks=8, cpu_gemm_dtype=dtype))
        assert _gemm_dtypes(engine) == {dtype}
        assert engine.runner.model.lm_head.cpu_gemm_dtype == "float32"    # logits stay fp32
        # a 25-row prompt takes the tiled path (more rows than GEMV_MAX_M), so bf16 is used there
        answers[dtype] = _greedy(engine, [prompt * 5], 4)["0"]
    assert answers["bfloat16"][:2] == answers["float32"][:2]


@requires_default_model
def test_bf16x3_gives_the_float32_greedy_tokens_in_prefill_and_batched_decode():
    from lmserve.engine.engine import Engine
    from lmserve.kernels.cpu_quant_linear import split_bf16_unavailable_reason
    from lmserve.model.loader import load_model
    why = split_bf16_unavailable_reason()
    if why is not None:
        pytest.skip(f"bf16x3 cannot run here: {why}")
    loaded = load_model(None, keep_gguf_quantized=True)
    tok = loaded.tokenizer
    texts = ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):",
             "Explain why the sky is blue in one sentence.", "List three prime numbers:",
             "Once upon a time, in a small village,"]
    # 24 sequences decode together: more rows than GEMV_MAX_M, so decode takes the GEMM as well
    prompts = [tok.encode(t) * (1 + i % 4) for i, t in enumerate(texts * 4)]
    answers = {}
    for dtype in ("float32", "bf16x3"):
        engine = Engine(loaded, EngineConfig(device="cpu", num_blocks=64, cpu_gemm_dtype=dtype))
        if dtype == "bf16x3":
            assert _gemm_dtypes(engine) == {"bf16x3"}
            model = engine.runner.model
            assert model.lm_head.cpu_gemm_dtype == "bf16x3" and model.lm_head.cpu_split_weight is not None
        answers[dtype] = _greedy(engine, prompts, 12)
    assert answers["bf16x3"] == answers["float32"]


@requires_default_model
def test_bf16x3_on_a_cpu_without_bf16_matrix_instructions_is_refused_at_start(monkeypatch):
    from lmserve.engine import cpu_setup
    from lmserve.engine.engine import Engine
    from lmserve.model.loader import load_model
    monkeypatch.setattr(cpu_setup, "split_bf16_unavailable_reason",
                        lambda: "this CPU has no bf16 matrix instructions (AMX-BF16 or AVX512-BF16)")
    with pytest.raises(ValueError, match="--cpu-gemm-dtype bf16x3 cannot run here: this CPU has no bf16"):
        Engine(load_model(None, keep_gguf_quantized=True),
               EngineConfig(device="cpu", num_blocks=8, cpu_gemm_dtype="bf16x3"))


def test_keep_freed_memory_turns_glibc_mmap_off_once_and_can_be_declined(monkeypatch):
    from lmserve.engine import cpu_setup
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(cpu_setup.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(cpu_setup.ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(cpu_setup, "_kept", False)
    monkeypatch.setenv(cpu_setup.KEEP_FREED_ENV, "0")
    cpu_setup.keep_freed_memory()
    assert calls == []
    monkeypatch.delenv(cpu_setup.KEEP_FREED_ENV)
    cpu_setup.keep_freed_memory()
    cpu_setup.keep_freed_memory()           # process-wide: set once
    assert calls == [(-4, 0), (-1, 2**31 - 1)]
