"""When the Triton kernels may run, and small helpers shared by their launchers.

The kernels run on CUDA tensors. The same kernels also run on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1 set before a kernel module is imported), which is how the tests check them on
machines without a GPU; the nn layers only ever send CUDA tensors here.
"""
from __future__ import annotations

import functools
import os

import torch

_DISABLE_ENV = "LMSERVE_DISABLE_TRITON"


@functools.cache
def triton_importable() -> bool:
    if os.environ.get(_DISABLE_ENV, "") not in ("", "0"):
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:           # a broken triton install must leave the torch paths working
        return False
    return True


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when every tensor is on CUDA and triton can be imported."""
    # the first test settles every CPU call (~270 per decode step) without building a generator
    return tensors[0].is_cuda and all(t.is_cuda for t in tensors) and triton_importable()


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def dot_in_fp32(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a kernel's tl.dot must take fp32 operands at full (IEEE) precision.

    fp32 activations: yes, else the GPU would round them to tf32 and miss the fp32 reference.
    bf16: only on CPU, i.e. under Triton's interpreter, which (3.x) multiplies bf16 tl.dot
    operands as their raw 16-bit patterns; on CUDA bf16 goes to the tensor cores as it is.
    """
    return dtype == torch.float32 or (dtype == torch.bfloat16 and device.type == "cpu")
