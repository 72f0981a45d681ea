"""JIT-built C++ CPU extensions: built once per python/torch pair, cached, optional.

Where an extension cannot be built or run (no compiler, no AVX2/FMA, disabled by
LMSERVE_DISABLE_CPU_EXT) `get()` returns None after one warning and callers use their torch
reference instead; a build failure never reaches a request.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
# -fopenmp: at::parallel_for is an inline "#pragma omp parallel"; without it the loop runs on
# one thread. The .so then needs libgomp.so.1, which resolves to the copy torch already loaded.
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp")
LDFLAGS = ("-fopenmp",)
_MISSING = object()


class CPUExtension:
    def __init__(self, name: str, sources: tuple[str, ...], unsupported: Callable[[], str | None]):
        self.name, self.sources, self._unsupported = name, sources, unsupported
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
        why = self._unsupported()
        if why is None:
            try:
                from torch.utils.cpp_extension import load
                return load(name=self.name, sources=[str(CSRC / s) for s in self.sources],
                            extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                            build_directory=build_dir(self.name), verbose=False)
            except Exception as exc:       # compile failures must never reach the caller
                why = f"building it failed: {type(exc).__name__}: {exc}".strip()
        logger.warning("lmserve CPU extension %s unavailable (%s); using the torch reference",
                       self.name, why[:2000])
        return None


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
