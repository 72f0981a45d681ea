"""y = x @ dequant(W).T for low-bit weights on CPU, with the weights kept low-bit in memory.

Two regimes, picked per call by the number of activation rows M:
- M <= GEMV_MAX_M (decode): a hand-written AVX2/FMA GEMV (csrc/quant_gemv.cpp) reads every
  weight byte once for all M rows; batch-1 decode is memory-bound, so bytes read is the cost.
- larger M (prefill): tiles of weight rows are dequantized into a reused fp32 buffer and
  multiplied by torch's BLAS; no full fp32 copy of the weight is ever held.
The extension is JIT-compiled on first use and cached; where it cannot be built or run (no
compiler, not x86 with AVX2/FMA/F16C) quant_linear_ref serves instead, after one warning.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
import threading
from pathlib import Path

import torch

from .quant_weight import QuantWeight

logger = logging.getLogger(__name__)

# Largest M that takes the GEMV path. Measured on Zen 3, all SmolLM2-135M linears, one thread:
# Q4_1 M=20 GEMV 128 ms vs tiled 138 ms, M=24 154 vs 153, M=32 205 vs 182 (docs/benchmarks.md).
GEMV_MAX_M = 20

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = ("quant_linear_bind.cpp", "quant_gemv.cpp")
# -fopenmp: at::parallel_for is an inline "#pragma omp parallel"; without it the loop runs on
# one thread. The .so then needs libgomp.so.1, which resolves to the copy torch already loaded.
_CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
_DISABLE_ENV = "LMSERVE_DISABLE_CPU_EXT"

_load_lock = threading.Lock()
_ext_cache: dict[str, object] = {}     # the compiled-module cache: "ext" -> module or None


def quant_linear_ref(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """The definition: fp32 x @ dequant(W).T (+ bias), materializing the fp32 weight."""
    _check_x(x, w)
    return torch.nn.functional.linear(x.float(), w.dequantize(),
                                      None if bias is None else bias.float())


def quant_linear(x: torch.Tensor, w: QuantWeight, bias: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """fp32 [..., in] -> fp32 [..., out] with the weight in low-bit form.

    Other float dtypes of x are computed in fp32. Inference only: no autograd graph is built.
    """
    ext = _ext_cache.get("ext", _MISSING)
    if ext is _MISSING:
        ext = load_extension()
    if ext is None:
        return quant_linear_ref(x, w, bias)
    if bias is not None and bias.dtype != torch.float32:
        bias = bias.float()
    if x.dim() != 2:
        _check_x(x, w)
        y = ext.quant_linear(x.reshape(-1, x.shape[-1]).float(), w.qweight, w.scales, w.mins,
                             bias, w.bits, w.group_size, GEMV_MAX_M)
        return y.reshape(*x.shape[:-1], y.shape[-1])
    if x.dtype != torch.float32 or x.shape[1] != w.in_features:
        _check_x(x, w)
        x = x.float()
    return ext.quant_linear(x, w.qweight, w.scales, w.mins, bias, w.bits, w.group_size,
                            GEMV_MAX_M)


def _check_x(x: torch.Tensor, w: QuantWeight) -> None:
    if x.dim() < 1 or x.shape[-1] != w.in_features:
        raise ValueError(f"quant_linear: x has {x.shape[-1] if x.dim() else 0} features "
                         f"(shape {list(x.shape)}) but the weight expects {w.in_features}")
    if not x.is_floating_point() or x.device.type != "cpu":
        raise ValueError(f"quant_linear: x must be a floating-point CPU tensor, got "
                         f"{x.dtype} on {x.device}")


_MISSING = object()


def load_extension():
    """The compiled module, or None when this machine cannot build or run it (warned once)."""
    with _load_lock:
        if "ext" not in _ext_cache:
            _ext_cache["ext"] = _build()
        return _ext_cache["ext"]


def _build():
    why = _unsupported_reason()
    if why is None:
        try:
            from torch.utils.cpp_extension import load
            return load(name="lmserve_quant_gemv", sources=[str(_CSRC / s) for s in _SOURCES],
                        extra_cflags=list(_CFLAGS), extra_ldflags=list(_LDFLAGS),
                        build_directory=_build_dir(),
                        verbose=False)
        except Exception as exc:       # compile failures must never reach the caller
            why = f"building the extension failed: {type(exc).__name__}: {exc}".strip()
    logger.warning("lmserve CPU quant kernel unavailable (%s); using the slower torch "
                   "reference quant_linear_ref", why[:2000])
    return None


def _unsupported_reason() -> str | None:
    if os.environ.get(_DISABLE_ENV, "") not in ("", "0"):
        return f"disabled by {_DISABLE_ENV}"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"CPU lacks AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    flags = _cpu_flags()
    missing = [f for f in ("avx2", "fma", "f16c") if flags is not None and f not in flags]
    if missing:
        return f"CPU lacks {', '.join(missing)}"
    return None


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None                          # not Linux: trust torch's AVX2 report


def _build_dir() -> str:
    """TORCH_EXTENSIONS_DIR when set, else ~/.cache/lmserve; one folder per python/torch pair
    so upgrading either rebuilds instead of loading an incompatible binary."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmserve",
        "torch_extensions")
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}_torch{torch.__version__}".replace("+", "_")
    path = os.path.join(root, tag, "lmserve_quant_gemv")
    os.makedirs(path, exist_ok=True)
    return path
