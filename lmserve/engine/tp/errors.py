"""Errors of a tensor-parallel engine; both are fatal to it (the group cannot be mended)."""
from __future__ import annotations


class TPSetupError(RuntimeError):
    """The ranks could not form their process group, or a rank failed to load its shard."""


class TPFailedError(RuntimeError):
    """A rank died or a step's collectives failed: the engine has stopped and must be restarted."""
