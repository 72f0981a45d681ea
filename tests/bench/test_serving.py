"""`lmserve bench serving` against lmserve's own OpenAI-compatible server, started in the test."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lmserve.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from lmserve.api import Pipeline
    from lmserve.config import EngineConfig
    from lmserve.serve.app import create_app
    from lmserve.serve.server import BackgroundServer
    pipe = Pipeline(tiny_model_dir, EngineConfig(num_blocks=160, cache_block_seq_len=16, max_batch_size=8))
    with BackgroundServer(create_app(pipe)) as srv:
        yield srv
    pipe.close()


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_serving_streams_every_request_and_saves_the_result(server, tiny_model_dir, endpoint, tmp_path, capsys):
    out = tmp_path / "serving.json"
    main(["bench", "serving", "--base-url", server.url, "--endpoint", endpoint, "--tokenizer", tiny_model_dir,
          "--dataset", "random", "--num-prompts", "5", "--input-len", "10", "--output-len", "6",
          "--request-rate", "50", "--max-concurrency", "2", "--ignore-eos", "--goodput", "ttft:60000", "e2el:0.001",
          "--save-result", str(out), "--no-progress"])
    result = json.loads(out.read_text())
    summary, per_request = result["summary"], result["requests"]
    assert summary["completed"] == 5 and summary["failed"] == 0
    # token counts are the server's usage: exactly the asked length with ignore_eos
    assert per_request["output_lens"] == [6] * 5
    assert all(0 < t <= e for t, e in zip(per_request["ttfts"], per_request["e2els"]))
    assert all(len(gaps) == 5 for gaps in per_request["itls"])    # one chunk per token: 5 gaps after the first
    # a 1 us end-to-end limit is out of reach for any server (a 1 ms TPOT was not: tokens that
    # arrive in one chunk make a TPOT near 0)
    assert summary["good_requests"] == 0
    assert result["config"]["model"] and result["config"]["max_concurrency"] == 2
    assert "Serving Benchmark Result" in capsys.readouterr().out


def test_serving_reports_an_unreachable_server(tmp_path):
    from lmserve.serve.server import free_port
    with pytest.raises(SystemExit, match="cannot list the models"):
        main(["bench", "serving", "--base-url", f"http://127.0.0.1:{free_port()}", "--dataset", "random"])
