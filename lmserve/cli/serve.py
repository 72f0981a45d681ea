"""`lmserve serve api_server [MODEL]` and `lmserve serve api_client URL` (LMDeploy's names and flags).

`add_serve_parser(subparsers)` is what the top-level CLI calls. Every flag is accepted with dashes
and with underscores (`--max-batch-size`, `--max_batch_size`), as LMDeploy's users type both.
"""
from __future__ import annotations

import argparse
import logging

from lmserve.cli.args import add_engine_args, add_tp_args, engine_config_from_args, tp_config_kwargs
from lmserve.cli.serve_gradio import add_gradio_parser
from lmserve.config import ChatTemplateConfig

logger = logging.getLogger(__name__)


def _flag(parser, name: str, *aliases: str, **kwargs):
    """Add --a-b together with --a_b (and any aliases, likewise)."""
    names = []
    for n in (name, *aliases):
        names.append(n)
        if "-" in n[2:]:
            names.append("--" + n[2:].replace("-", "_"))
    return parser.add_argument(*names, **kwargs)


def chat_template_config(args) -> ChatTemplateConfig:
    """--chat-template picks the template; --model-name is the served name, and also the template
    when it names a built-in one (LMDeploy's older meaning, and `lmserve chat`'s)."""
    from lmserve.chat_template import BUILTIN_TEMPLATES
    name = args.chat_template
    if name is None and args.model_name and args.model_name.lower() in BUILTIN_TEMPLATES:
        name = args.model_name     # LMDeploy's older habit: --model-name internlm2 picks the template
    return ChatTemplateConfig(model_name=name, meta_instruction=args.meta_instruction)


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    serve = subparsers.add_parser("serve", help="serve a model over HTTP (OpenAI-compatible), or chat with one")
    kinds = serve.add_subparsers(dest="serve_command", metavar="{api_server,api_client,worker,gradio}")
    kinds.required = True

    s = kinds.add_parser("api_server", help="start the OpenAI-compatible HTTP server",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("model_path", nargs="?", default=None,
                   help="HF directory or GGUF file; when omitted, the embedded SmolLM2-135M-Instruct")
    _flag(s, "--server-name", default="0.0.0.0", help="address to listen on")
    _flag(s, "--server-port", type=int, default=23333, help="port to listen on")
    _flag(s, "--api-keys", nargs="+", default=None, help="accept only requests with 'Authorization: Bearer KEY'")
    _flag(s, "--allow-origins", nargs="+", default=["*"], help="CORS: allowed origins")
    _flag(s, "--allow-credentials", action="store_true", help="CORS: allow credentials")
    _flag(s, "--allow-methods", nargs="+", default=["*"], help="CORS: allowed methods")
    _flag(s, "--allow-headers", nargs="+", default=["*"], help="CORS: allowed headers")
    _flag(s, "--max-concurrent-requests", type=int, default=None,
          help="answer 429 past this many generation requests in flight; none = no cap")
    _flag(s, "--disable-docs", "--disable-fastapi-docs", action="store_true",
          help="no Swagger UI (/docs), ReDoc or /openapi.json")
    _flag(s, "--session-ttl", type=float, default=600.0,
          help="seconds an idle /v1/chat/interactive session (history and K/V) is kept")
    _flag(s, "--drain-timeout", type=float, default=30.0,
          help="on SIGTERM, seconds in-flight requests may take to finish before they are aborted")
    _flag(s, "--chat-template", default=None, help="a built-in chat template by name; none = the model's own")
    add_engine_args(s)      # --model-name, --session-len, ... and --log-level, shared with `lmserve chat`
    s.set_defaults(func=run_api_server)

    c = kinds.add_parser("api_client", help="chat in the terminal with an OpenAI-compatible server")
    c.add_argument("api_server_url", metavar="URL", help="e.g. http://127.0.0.1:23333")
    _flag(c, "--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    _flag(c, "--model", default=None, help="model name; none = the server's first")
    _flag(c, "--system", default=None, help="a system prompt")
    _flag(c, "--max-tokens", type=int, default=None)
    _flag(c, "--temperature", type=float, default=None)
    c.set_defaults(func=run_api_client)

    w = kinds.add_parser("worker", help="run this node's tensor-parallel ranks for an engine on node 0",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="On --node-rank 1 and above: join the engine started on node 0 with the "
                                     "same --tp, --nnodes, --master-addr and --master-port; the model and the "
                                     "engine flags come from node 0.")
    add_tp_args(w)
    _flag(w, "--device", default="auto", choices=["auto", "cpu", "cuda"])
    _flag(w, "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    w.set_defaults(func=run_worker)
    add_gradio_parser(kinds)
    return serve


def run_worker(args) -> int:
    from lmserve.config import EngineConfig
    from lmserve.engine.model_runner import resolve_device
    from lmserve.engine.tp.worker import run_node
    logging.getLogger("lmserve").setLevel(args.log_level)
    try:
        cfg = EngineConfig(device=args.device, **tp_config_kwargs(args))
        run_node(cfg, resolve_device(cfg).type)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"lmserve serve worker: {e}") from e
    return 0


def run_api_server(args) -> int:
    from lmserve.serve.context import ServerConfig
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lmserve").setLevel(args.log_level)
    engine_cfg = engine_config_from_args(args)
    try:   # check every flag before the (slow) model load
        template_cfg = chat_template_config(args)
        server_cfg = ServerConfig(served_model_name=args.model_name, api_keys=args.api_keys,
                                  allow_origins=args.allow_origins, allow_credentials=args.allow_credentials,
                                  allow_methods=args.allow_methods, allow_headers=args.allow_headers,
                                  max_concurrent_requests=args.max_concurrent_requests,
                                  disable_docs=args.disable_docs, session_ttl=args.session_ttl)
        if not 0 < args.server_port < 65536:
            raise ValueError(f"--server-port must be in [1, 65535], got {args.server_port}")
        if args.drain_timeout < 0:
            raise ValueError(f"--drain-timeout must be >= 0, got {args.drain_timeout}")
    except ValueError as e:
        raise SystemExit(f"lmserve serve api_server: {e}") from e
    from lmserve.api import Pipeline
    from lmserve.serve.app import create_app
    from lmserve.serve.server import serve_forever
    try:
        pipe = Pipeline(args.model_path, engine_cfg, template_cfg)
    except ValueError as e:     # e.g. a --tp this model cannot be split by
        raise SystemExit(f"lmserve serve api_server: {e}") from e
    app = create_app(pipe, server_cfg, close_pipeline=True)
    serve_forever(app, args.server_name, args.server_port, args.drain_timeout, args.log_level)
    return 0


def run_api_client(args) -> int:
    from lmserve.serve.api_client import chat
    params = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature)) if v is not None}
    return chat(args.api_server_url, args.api_key, args.model, args.system, **params)
