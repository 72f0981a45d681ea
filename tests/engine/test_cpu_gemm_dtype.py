"""--cpu-gemm-dtype bfloat16: the low-bit matmuls above decode size run in bf16 (fast with AMX)."""
from __future__ import annotations

import pytest

from lmserve.config import EngineConfig, GenerationConfig
from tests.conftest import requires_default_model


def test_the_flag_is_validated_with_its_name():
    with pytest.raises(ValueError, match="--cpu-gemm-dtype must be float32 or bfloat16"):
        EngineConfig(cpu_gemm_dtype="float16")


@requires_default_model
def test_bf16_gemm_reaches_every_low_bit_matmul_and_keeps_a_clear_greedy_answer():
    from lmserve.engine.engine import Engine
    from lmserve.model.loader import load_model
    from lmserve.nn.linear import LinearBase
    loaded = load_model(None, keep_gguf_quantized=True)
    prompt = loaded.tokenizer.encode("The capital of France is")
    gen = GenerationConfig(max_new_tokens=4, ignore_eos=True)
    answers = {}
    for dtype in ("float32", "bfloat16"):
        engine = Engine(loaded, EngineConfig(device="cpu", num_blocks=8, cpu_gemm_dtype=dtype))
        flags = {m.bf16_gemm for m in engine.runner.model.modules() if isinstance(m, LinearBase)}
        assert flags == {dtype == "bfloat16"}
        # a 25-row prompt takes the tiled path (more rows than GEMV_MAX_M), so bf16 is used there
        engine.add_request(dtype, prompt * 5, gen)
        while engine.has_work():
            for out in engine.step():
                if out.finished:
                    answers[dtype] = out.token_ids
    assert answers["bfloat16"][:2] == answers["float32"][:2]
