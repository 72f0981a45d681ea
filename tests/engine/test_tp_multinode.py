"""Tensor parallelism across "machines": --tp 2 --nnodes 2 on this one box, gloo over 127.0.0.1.

Node 0 is a real `lmserve serve api_server` process (rank 0, the engine and the HTTP server) and
node 1 a real `lmserve serve worker` process (rank 1; with --tp 4, ranks 2 and 3, node 1 spawning
rank 3 as node 0 spawns rank 1), each its own OS process and session, meeting only through
--master-addr/--master-port as two machines would. Greedy completions over HTTP must
equal a --tp 1 engine's. Neither node may hang when the other dies: with node 1 killed, node 0 fails
the next request with a message that names the broken step and exits with status 1 (for a supervisor
to restart it); with node 0 killed, node 1 (and the worker it spawned) exits with status 1 saying it lost the group.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import torch.distributed as dist  # noqa: E402

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("this torch build has no torch.distributed gloo backend", allow_module_level=True)

from lmserve import GenerationConfig  # noqa: E402
from lmserve.model.loader import load_model  # noqa: E402
from tests.engine.helpers import make_engine, run_all  # noqa: E402
from tests.engine.test_tensor_parallel import ENGINE, save_tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [[1, 5, 17, 42, 3, 88, 9, 60, 2, 71], list(range(10, 40))]
MAX_TOKENS = 8
START_TIMEOUT_S = 45.0     # two cold Python processes importing torch on a busy 2-core box


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)      # the flags alone must be enough, as on a fresh machine
    with open(log, "wb") as out:
        # its own session, so that killing the node kills everything it started
        return subprocess.Popen([sys.executable, "-m", "lmserve.cli.main", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def _wait_healthy(url: str, procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                pytest.fail(f"{name} exited with {p.returncode} during start-up:\n{logs[name].read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail("node 0 did not become healthy in time:\n" + "\n".join(
        f"--- {n}:\n{logs[n].read_text()}" for n in logs))


def _complete(url: str, prompt: list[int]) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                            "ignore_eos": True})


def _start_nodes(tmp_path: Path, model: str, tp: int):
    """Node 0 (api_server, ranks 0 .. tp/2-1) and node 1 (worker, the other half); returns the URL,
    processes and logs. With tp 4 each node also spawns a local worker of its own."""
    master, http = _free_port(), _free_port()
    rendezvous = ["--tp", str(tp), "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(master),
                  "--tp-timeout", "30", "--tp-oversubscribe", "--device", "cpu"]
    logs = {"node 0": tmp_path / "node0.log", "node 1": tmp_path / "node1.log"}
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["node 0"] = _start(["serve", "api_server", model, "--model-name", "tiny", "--node-rank", "0",
                                  *rendezvous, "--server-port", str(http), "--num-blocks", "64",
                                  "--cache-block-seq-len", "8", "--max-prefill-token-num", "16"], logs["node 0"])
        procs["node 1"] = _start(["serve", "worker", "--node-rank", "1", *rendezvous], logs["node 1"])
        url = f"http://127.0.0.1:{http}"
        _wait_healthy(url, procs, logs)
    except BaseException:
        for p in procs.values():
            _kill(p)
        raise
    return url, procs, logs


@pytest.fixture
def tiny_path(tmp_path, default_loaded) -> str:
    return save_tiny(tmp_path / "model", default_loaded.tokenizer, 2)


def test_two_nodes_match_tp1_and_a_dead_node_1_fails_clearly(tmp_path, tiny_path):
    want = [o.text for o in run_all(make_engine(load_model(tiny_path), **ENGINE), PROMPTS,
                                    GenerationConfig(max_new_tokens=MAX_TOKENS, ignore_eos=True))]
    url, procs, logs = _start_nodes(tmp_path, tiny_path, tp=2)
    try:
        got = []
        for prompt in PROMPTS:
            r = _complete(url, prompt)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS
            got.append(r.json()["choices"][0]["text"])
        assert got == want

        _kill(procs["node 1"])
        started = time.monotonic()
        r = _complete(url, PROMPTS[0])
        # well inside --tp-timeout 30: gloo sees the closed connection, nothing waits for a timeout
        assert time.monotonic() - started < 15
        assert r.status_code == 500 and "a tensor-parallel step failed" in r.text, r.text
        assert "a worker on another node may have died" in r.text
        assert procs["node 0"].wait(20) == 1      # the server notices the dead engine and exits
        assert "lmserve api_server: the engine has stopped" in logs["node 0"].read_text()
    finally:
        for p in procs.values():
            _kill(p)


def test_two_ranks_per_node_and_a_dead_node_0_makes_node_1_exit_clearly(tmp_path, tiny_path):
    want = run_all(make_engine(load_model(tiny_path), **ENGINE), PROMPTS[1:],
                   GenerationConfig(max_new_tokens=MAX_TOKENS, ignore_eos=True))[0].text
    url, procs, logs = _start_nodes(tmp_path, tiny_path, tp=4)
    try:
        r = _complete(url, PROMPTS[1])
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want, r.text
        _kill(procs["node 0"])
        # node 1's ranks 2 and 3 both see the group break; not left waiting for steps that never come
        assert procs["node 1"].wait(30) == 1
        text = logs["node 1"].read_text()
        assert "rank 2 lost the tensor-parallel group" in text and "node 0 (127.0.0.1:" in text, text
    finally:
        for p in procs.values():
            _kill(p)
