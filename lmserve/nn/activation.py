"""SiLU-and-multiply over a packed [gate | up] projection."""
from __future__ import annotations

from lmserve.kernels.dispatch import silu_and_mul

__all__ = ["silu_and_mul"]
