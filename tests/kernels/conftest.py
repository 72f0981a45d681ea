"""Fixtures of the kernel tests."""
from .triton_testing import interpreter  # noqa: F401  (TRITON_INTERPRET=1 for one test)
