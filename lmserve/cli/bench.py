"""`lmserve bench {generation,throughput,serving,compare-hf,plot}`: the flags; the work is in lmserve/bench/.

Every flag is accepted with dashes and with underscores (`--num-prompts`, `--num_prompts`).
"""
from __future__ import annotations

import argparse
import importlib

from pathlib import Path

from lmserve.cli.args import add_engine_args

# The project's sample of ShareGPT (../shared/data next to the checkout), the default where present.
_SHARED_SHAREGPT = Path(__file__).resolve().parents[3] / "shared" / "data" / "sharegpt_v3_1000.json"
SHAREGPT = str(_SHARED_SHAREGPT) if _SHARED_SHAREGPT.exists() else None


def add_flag(parser, name: str, *aliases: str, **kwargs) -> None:
    """--a-b together with --a_b, plus short aliases."""
    names = list(dict.fromkeys(["--" + name.replace("_", "-"), "--" + name])) + list(aliases)
    parser.add_argument(*names, dest=name, **kwargs)


_BENCH_EXTRA = {"httpx", "psutil", "matplotlib"}


def _runner(module: str):
    """Import the benchmark's module only when it runs, so `lmserve --help` stays fast."""
    def run(args):
        try:
            bench = importlib.import_module(f"lmserve.bench.{module}")
        except ModuleNotFoundError as e:
            if e.name not in _BENCH_EXTRA:
                raise
            raise SystemExit(f"lmserve bench needs {e.name}: pip install 'lmserve[bench]'") from e
        bench.main(args)
    return run


def _model_arg(p) -> None:
    p.add_argument("model_path", nargs="?", default=None,
                   help="HF directory, GGUF file or named shape (with --load-format dummy); "
                        "when omitted, the embedded SmolLM2-135M-Instruct")


def _dataset_args(p, default: str | None = None) -> None:
    g = p.add_argument_group("dataset")
    add_flag(g, "dataset", default=default, required=default is None,
             help="a ShareGPT-format JSON file, or 'random' for random token prompts "
                  "(default: the project's ../shared/data sample, where present)")
    add_flag(g, "num_prompts", type=int, default=1000, help="requests to run (the first usable ones of a file)")
    add_flag(g, "sharegpt_output_len", type=int, default=None,
             help="output tokens of every ShareGPT request (default: the reply's length; "
                  "conversations without a reply then need this flag)")
    add_flag(g, "input_len", type=int, default=1024, help="prompt tokens of --dataset random")
    add_flag(g, "output_len", type=int, default=128, help="output tokens of --dataset random")
    add_flag(g, "seed", type=int, default=0, help="seed of the random prompts and the Poisson arrivals")


def _output_args(p, csv: bool = True) -> None:
    add_flag(p, "json", default=None, metavar="PATH", help="write the result (with per-request data) as JSON")
    if csv:
        add_flag(p, "csv", default=None, metavar="PATH", help="write the summary as CSV")
    add_flag(p, "no_progress", action="store_true", help="no progress bars")


def _goodput_arg(p) -> None:
    add_flag(p, "goodput", nargs="+", default=None, metavar="NAME:MS",
             help="latency limits of a good request, e.g. ttft:500 tpot:100 (names: ttft, tpot, e2el)")


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    bench = subparsers.add_parser("bench", help="benchmark a model in-process, a server over HTTP, or plot results")
    kinds = bench.add_subparsers(dest="bench_command", metavar="{generation,throughput,serving,compare-hf,plot}")
    kinds.required = True
    fmt = argparse.ArgumentDefaultsHelpFormatter

    g = kinds.add_parser("generation", formatter_class=fmt,
                         help="static batches: first-token and per-token latency, tok/s, peak memory")
    _model_arg(g)
    add_flag(g, "concurrency", "-c", type=int, nargs="+", default=[1, 16, 32], help="requests per batch")
    add_flag(g, "prompt_tokens", "-pt", type=int, nargs="+", default=[128], help="prompt lengths")
    add_flag(g, "completion_tokens", "-ct", type=int, nargs="+", default=[128], help="output lengths")
    add_flag(g, "test_round", "-tr", type=int, default=3, help="rounds per combination")
    _output_args(g)
    add_engine_args(g)
    g.set_defaults(func=_runner("generation"))

    t = kinds.add_parser("throughput", formatter_class=fmt,
                         help="a dataset through the in-process engine: request and token throughput, latencies")
    _model_arg(t)
    _dataset_args(t, default=SHAREGPT)
    add_flag(t, "concurrency", type=int, default=64, help="requests in flight at most")
    add_flag(t, "request_rate", type=float, default=float("inf"),
             help="Poisson arrivals per second; inf = all requests at once (up to --concurrency)")
    _goodput_arg(t)
    _output_args(t)
    add_engine_args(t)
    t.set_defaults(func=_runner("throughput"))

    s = kinds.add_parser("serving", formatter_class=fmt,
                         help="load on an OpenAI-compatible server over HTTP (streamed), with goodput")
    add_flag(s, "base_url", default="http://localhost:23333", help="the server, without /v1")
    add_flag(s, "endpoint", default="completions", choices=["completions", "chat"],
             help="/v1/completions (raw prompt) or /v1/chat/completions (the prompt as one user message)")
    add_flag(s, "model", default=None, help="model name to send; default: the server's first in /v1/models")
    add_flag(s, "api_key", default=None, help="sent as 'Authorization: Bearer KEY'")
    add_flag(s, "tokenizer", default=None,
             help="model whose tokenizer counts prompt tokens (HF dir or GGUF); default: the embedded model")
    add_flag(s, "session_len", type=int, default=2048, help="drop ShareGPT requests longer than this")
    _dataset_args(s, default=SHAREGPT)
    add_flag(s, "request_rate", type=float, default=float("inf"),
             help="Poisson arrivals per second; inf = all requests at once")
    add_flag(s, "max_concurrency", type=int, default=None, help="requests in flight at most; none = no cap")
    add_flag(s, "ignore_eos", action="store_true",
             help="send ignore_eos (lmserve and vLLM accept it) so every answer has its full length")
    _goodput_arg(s)
    add_flag(s, "save_result", default=None, metavar="PATH", help="write the result as JSON")
    add_flag(s, "no_progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_runner("serving"))

    c = kinds.add_parser("compare-hf", formatter_class=fmt,
                         help="speedup over transformers generate: single stream and batched, in one run")
    _model_arg(c)
    add_flag(c, "dataset", default=SHAREGPT, required=SHAREGPT is None,
             help="ShareGPT-format JSON file; its first usable prompts are used")
    add_flag(c, "num_prompts", type=int, default=64, help="prompts of the batched comparison")
    add_flag(c, "output_len", type=int, default=64, help="new tokens per prompt in the batched comparison")
    add_flag(c, "single_output_len", type=int, default=128, help="new tokens of the single-stream comparison")
    add_flag(c, "single_runs", type=int, default=2, help="single-stream runs of each (the best counts)")
    _output_args(c, csv=False)
    add_engine_args(c)
    c.set_defaults(func=_runner("compare_hf"))

    p = kinds.add_parser("plot", formatter_class=fmt,
                         help="PNG of throughput vs concurrency and latency CDFs from result JSON files")
    p.add_argument("results", nargs="+", help="JSON files written by bench generation/throughput/serving")
    add_flag(p, "output", "-o", default="report.png", help="the PNG to write")
    p.set_defaults(func=_runner("plot"))
    return bench
