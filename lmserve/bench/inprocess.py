"""One benchmark request through the in-process engine, via the public async API
(`Pipeline.generate`), timed from submission to each token's arrival in the caller's event loop.

Prompts go in as token ids (no chat template), and generation ignores EOS with max_new_tokens set to
the request's target length, so every request produces exactly the tokens it asked for.
"""
from __future__ import annotations

import time

import torch

from lmserve.bench.datasets import SampleRequest
from lmserve.bench.metrics import RequestRecord, record_from_arrivals
from lmserve.config import GenerationConfig


def fixed_length_config(output_len: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=output_len, ignore_eos=True)


async def generate_timed(pipe, request: SampleRequest) -> RequestRecord:
    arrivals: list[tuple[float, int]] = []
    start = time.perf_counter()
    try:
        async for out in pipe.generate(request.prompt_ids, fixed_length_config(request.output_len),
                                       do_preprocess=False):
            arrivals.append((time.perf_counter(), len(out.delta_token_ids)))
    except Exception as e:      # e.g. a prompt the engine refuses: counted as failed, the run goes on
        return RequestRecord(request.prompt_len, success=False, error=f"{type(e).__name__}: {e}")
    return record_from_arrivals(request.prompt_len, start, arrivals)


def engine_device(pipe) -> str:
    """Where the pipeline's engine runs, from its config as the user gave it."""
    wanted = pipe.backend_config.device
    return "cuda" if wanted in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
