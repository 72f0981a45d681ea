"""`lmserve serve gradio [MODEL | URL]`: the chat page in the browser, on port 6006 (LMDeploy's).

With a model path (or none: the embedded SmolLM2) the page runs its own engine; with an http(s)
URL it is a client of a running `lmserve serve api_server`. Gradio is the optional `webui` extra.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging

from lmserve.cli.args import add_engine_args, add_flag, engine_config_from_args

logger = logging.getLogger(__name__)


def add_gradio_parser(kinds) -> argparse.ArgumentParser:
    g = kinds.add_parser("gradio", help="a chat page in the browser (Gradio), on a local engine or an api_server",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("model_path", nargs="?", default=None, metavar="MODEL_OR_URL",
                   help="HF directory or GGUF file (none: the embedded SmolLM2-135M-Instruct), or the URL of "
                        "a running api_server such as http://127.0.0.1:23333")
    add_flag(g, "server_name", default="0.0.0.0", help="address the page listens on")
    add_flag(g, "server_port", type=int, default=6006, help="port the page listens on")
    add_flag(g, "share", action="store_true", help="also publish the page through a public Gradio share link")
    add_flag(g, "api_key", default=None, help="with a URL: sent as 'Authorization: Bearer KEY'")
    add_flag(g, "model", default=None, help="with a URL: the served model's name; none = the server's first")
    add_flag(g, "chat_template", default=None, help="a built-in chat template by name; none = the model's own")
    page = g.add_argument_group("the page's initial settings")
    add_flag(page, "max_new_tokens", type=int, default=512)
    add_flag(page, "temperature", type=float, default=0.7, help="0 = greedy")
    add_flag(page, "top_p", type=float, default=0.8)
    add_flag(page, "top_k", type=int, default=40, help="0 = off")
    add_engine_args(g)      # --session-len, --cache-max-entry-count ... for a local engine; --log-level
    g.set_defaults(func=run_gradio)
    return g


def is_url(target: str | None) -> bool:
    return bool(target) and target.startswith(("http://", "https://"))


def run_gradio(args) -> int:
    logging.getLogger("lmserve").setLevel(args.log_level)
    if importlib.util.find_spec("gradio") is None:
        raise SystemExit("lmserve serve gradio needs Gradio: pip install 'lmserve[webui]'")
    from lmserve.webui.backend import BackendError, ChatParams
    try:   # every flag is checked before the (slow) model load
        if not 0 < args.server_port < 65536:
            raise ValueError(f"--server-port must be in [1, 65535], got {args.server_port}")
        defaults = ChatParams(args.max_new_tokens, args.temperature, args.top_p, args.top_k)
    except ValueError as e:
        raise SystemExit(f"lmserve serve gradio: {e}") from e
    if is_url(args.model_path):
        from lmserve.webui.http_backend import HTTPBackend
        backend = HTTPBackend(args.model_path, args.api_key, args.model)
        try:
            backend.connect()
        except BackendError as e:
            raise SystemExit(f"lmserve serve gradio: {e}") from e
        limit = backend.max_model_len
    else:
        backend, limit = _local_backend(args)
    from lmserve.webui.page import build_page, launch
    try:
        page = build_page(backend, defaults, limit or 4096)
        shown = "127.0.0.1" if args.server_name in ("0.0.0.0", "::") else args.server_name

        def started(local_url: str, share_url: str | None) -> None:
            print(f"lmserve chat page on http://{shown}:{args.server_port} ({backend.description})"
                  + (f"; public link {share_url}" if share_url else ""), flush=True)
        launch(page, args.server_name, args.server_port, args.share, on_start=started)
    finally:
        backend.close()
    return 0


def _local_backend(args):
    from lmserve.cli.serve import chat_template_config
    engine_cfg = engine_config_from_args(args)
    try:
        template_cfg = chat_template_config(args)
    except ValueError as e:
        raise SystemExit(f"lmserve serve gradio: {e}") from e
    from lmserve.api import Pipeline
    from lmserve.serve.stats import read_limits
    from lmserve.webui.local_backend import LocalBackend
    pipe = Pipeline(args.model_path, engine_cfg, template_cfg)
    return LocalBackend(pipe, owns_pipeline=True), read_limits(pipe).session_len
