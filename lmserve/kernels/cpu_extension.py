"""JIT-built C++ CPU extensions: built once per python/torch pair, cached, optional.

Where an extension cannot be built or run (no compiler, not x86-64 with AVX2/FMA/F16C, or
disabled by LMSERVE_DISABLE_CPU_EXT) `get()` returns None after one warning and callers use
their torch reference instead; a build failure never reaches a request.

LMSERVE_DISABLE_CPU_EXT: "1" turns every extension off; a comma-separated list of names
("quant_gemv", "paged_attention", "paged_attention_kvq", "cpu_ops", "decode_stack", with or
without the "lmserve_" prefix) turns off just those,
so a benchmark can compare one kernel against its reference with everything else unchanged.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
DISABLE_ENV = "LMSERVE_DISABLE_CPU_EXT"
# -fopenmp: at::parallel_for is an inline "#pragma omp parallel"; without it the loop runs on
# one thread. The .so then needs libgomp.so.1, which resolves to the copy torch already loaded.
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp")
LDFLAGS = ("-fopenmp",)
_MISSING = object()


class CPUExtension:
    """One extension module: `name` is its torch extension name, `sources` live in csrc/,
    `unsupported` says why this machine cannot run it (default: unsupported_reason), and
    `reference` names the torch function callers use instead (for the warning)."""

    def __init__(self, name: str, sources: tuple[str, ...],
                 unsupported: Callable[[], str | None] | None = None,
                 reference: str = "torch reference"):
        self.name, self.sources, self.reference = name, sources, reference
        self._unsupported = unsupported or unsupported_reason
        self._module = _MISSING
        self._lock = threading.Lock()

    def get(self):
        """The compiled module, or None when this machine cannot build or run it."""
        module = self._module
        if module is _MISSING:
            with self._lock:
                if self._module is _MISSING:
                    self._module = self._build()
                module = self._module
        return module

    def _build(self):
        why = disabled_reason(self.name) or self._unsupported()
        if why is None:
            try:
                from torch.utils.cpp_extension import load
                return load(name=self.name, sources=[str(CSRC / s) for s in self.sources],
                            extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                            build_directory=build_dir(self.name), verbose=False)
            except Exception as exc:       # compile failures must never reach the caller
                why = f"building the extension failed: {type(exc).__name__}: {exc}".strip()
        logger.warning("lmserve CPU extension %s unavailable (%s); using the slower %s",
                       self.name, why[:2000], self.reference)
        return None


def disabled_reason(name: str) -> str | None:
    value = os.environ.get(DISABLE_ENV, "").strip()
    if value in ("", "0"):
        return None
    names = {n.strip().removeprefix("lmserve_") for n in value.split(",")}
    if value.lower() in ("1", "true", "yes", "all") or name.removeprefix("lmserve_") in names:
        return f"disabled by {DISABLE_ENV}={value}"
    return None


def unsupported_reason() -> str | None:
    """Why this machine cannot run the AVX2/FMA/F16C extensions, or None when it can."""
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


def build_dir(name: str) -> str:
    """TORCH_EXTENSIONS_DIR when set, else ~/.cache/lmserve; one folder per python/torch pair
    so upgrading either rebuilds instead of loading an incompatible binary."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmserve",
        "torch_extensions")
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}_torch{torch.__version__}".replace("+", "_")
    path = os.path.join(root, tag, name)
    os.makedirs(path, exist_ok=True)
    return path
