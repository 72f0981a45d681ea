"""Running the Triton kernels on CPU under Triton's interpreter, inside one pytest process.

Triton picks interpreter or compiler when a @triton.jit function is defined (module import), and
reads TRITON_INTERPRET again while a kernel runs. So `interpreted()` loads a private copy of a
kernel module with TRITON_INTERPRET=1 set, whatever was imported before (the compiled copy the nn
layers use on CUDA), and the `interpreter` fixture keeps the variable set only for the duration of
a test, so GPU tests in the same process still compile their kernels.

Triton's own library functions (tl.sum, tl.max, ...) are @triton.jit functions too, defined when
triton is first imported. When that import happened without the interpreter (another test, or
transformers, imported triton first), the fixture swaps them for interpreted twins for the test.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch

_KERNELS = Path(__file__).resolve().parents[2] / "lmserve" / "kernels"
_copies: dict[str, object] = {}

requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                     reason="triton is not installed (pip install -e .[test])")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA GPU: the compiled Triton kernels")


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    for module in (tl, tl.standard):
        for name, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                monkeypatch.setattr(module, name, InterpretedFunction(value.fn))


def interpreted(name: str):
    """lmserve.kernels.<name>, loaded anew with its kernels bound to Triton's interpreter."""
    if name not in _copies:
        import lmserve.kernels  # noqa: F401  (the parent package of the copy)
        before = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            spec = importlib.util.spec_from_file_location(f"lmserve.kernels.{name}__interpreted",
                                                          _KERNELS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            if before is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = before
        _copies[name] = module
    return _copies[name]


def compiled(name: str):
    """The module the nn layers use (its kernels compiled for the GPU)."""
    return importlib.import_module(f"lmserve.kernels.{name}")
