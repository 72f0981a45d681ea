"""`lmserve serve ...` flags, the terminal client, and a real server process drained by SIGTERM."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.serve.helpers import API_KEY
from lmserve.cli.args import engine_config_from_args
from lmserve.cli.serve import add_serve_parser, chat_template_config
from lmserve.serve.api_client import chat
from lmserve.serve.server import free_port


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmserve")
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_api_server_flags_accept_dashes_and_underscores():
    dashes = parse("api_server", "/m.gguf", "--server-port", "8000", "--max-batch-size", "8", "--session-len", "512",
                   "--cache-max-entry-count", "0.5", "--enable-prefix-caching", "--api-keys", "a", "b",
                   "--max-concurrent-requests", "3", "--disable-docs", "--session-ttl", "5", "--num-blocks", "9")
    unders = parse("api_server", "/m.gguf", "--server_port", "8000", "--max_batch_size", "8", "--session_len", "512",
                   "--cache_max_entry_count", "0.5", "--enable_prefix_caching", "--api_keys", "a", "b",
                   "--max_concurrent_requests", "3", "--disable_docs", "--session_ttl", "5", "--num_blocks", "9")
    assert vars(dashes) == vars(unders)
    cfg = engine_config_from_args(dashes)
    assert (cfg.max_batch_size, cfg.session_len, cfg.cache_max_entry_count, cfg.enable_prefix_caching,
            cfg.num_blocks) == (8, 512, 0.5, True, 9)
    assert dashes.api_keys == ["a", "b"] and dashes.model_path == "/m.gguf"
    defaults = parse("api_server")
    assert (defaults.server_name, defaults.server_port, defaults.model_path) == ("0.0.0.0", 23333, None)


def test_model_name_picks_a_builtin_template_and_bad_flags_fail_early():
    assert chat_template_config(parse("api_server", "--model-name", "internlm2")).model_name == "internlm2"
    assert chat_template_config(parse("api_server", "--model-name", "my-bot")).model_name is None
    args = parse("api_server", "--cache-max-entry-count", "1.5")
    with pytest.raises(SystemExit, match="--cache-max-entry-count must be in"):
        args.func(args)
    args = parse("api_server", "--max-concurrent-requests", "0")
    with pytest.raises(SystemExit, match="--max-concurrent-requests"):
        args.func(args)


def reader(lines):
    """input() stand-in: the given lines, then end of input."""
    it = iter(lines)

    def read(_prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return read


def test_api_client_chats_over_several_turns(server, client, model_name):
    inputs, output = iter(["Hi, I am Ada.", "What did I just say?", "exit", "never read"]), []
    status = chat(server.url, read=lambda _: next(inputs), write=output.append, temperature=0, max_tokens=10)
    text = "".join(output)
    assert status == 0 and "chatting with" in text
    first = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Hi, I am Ada."}],
                                           temperature=0, max_tokens=10).choices[0].message.content
    assert first in text
    assert next(inputs) == "never read"          # 'exit' quit the loop


def test_api_client_with_keys(guarded_server):
    output = []
    assert chat(guarded_server.url, api_key=API_KEY, read=reader(["Hello"]), write=output.append,
                max_tokens=3) == 0                # ends at end of input
    assert "assistant >" in "".join(output)
    assert chat(guarded_server.url, api_key="wrong", read=lambda _: "exit", write=output.append) == 1
    assert "401" in output[-1] and "API key" in output[-1]


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lmserve.serve", "api_server", "--server-name", "127.0.0.1", "--server_port",
           str(port), "--session-len", "4096", "--num-blocks", "256", "--cache-block-seq-len", "16",
           "--drain-timeout", "20"]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.5)
        results, first_chunk = {}, {"short": threading.Event(), "long": threading.Event()}

        def stream(name: str, max_tokens: int):
            body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": max_tokens,
                    "ignore_eos": True, "temperature": 0, "stream": True}
            events = []
            try:
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            events.append(line[6:])
                            first_chunk[name].set()
            except httpx.TransportError as e:
                events.append(f"transport error: {e}")
            first_chunk[name].set()
            results[name] = events
        workers = [threading.Thread(target=stream, args=("short", 12)),
                   threading.Thread(target=stream, args=("long", 3500))]
        for w in workers:
            w.start()
        assert first_chunk["short"].wait(60) and first_chunk["long"].wait(60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "server.log").read_text()[-3000:]
        for w in workers:
            w.join(10)
        short = results["short"]
        assert short[-1] == "[DONE]" and json.loads(short[-2])["choices"][0]["finish_reason"] == "length"
        long = results["long"]            # still running at the drain timeout: aborted, yet ended properly
        assert long[-1] == "[DONE]" and json.loads(long[-2])["choices"][0]["finish_reason"] == "abort"
        log_text = (tmp_path / "server.log").read_text()
        assert "aborted 1 request(s)" in log_text and "Traceback" not in log_text
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
