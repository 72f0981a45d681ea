"""`lmserve` command line: one subcommand per face, each in its own module."""
from __future__ import annotations

import argparse
import logging
import sys

from lmserve import __version__
from lmserve.cli.bench import add_bench_parser
from lmserve.cli.chat import add_chat_parser
from lmserve.cli.eval_cmd import add_eval_parser
from lmserve.cli.info import add_info_parsers
from lmserve.cli.lite import add_lite_parser
from lmserve.cli.serve import add_serve_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmserve", description="Compress, run, serve and measure LLMs.")
    parser.add_argument("--version", action="version", version=f"lmserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_chat_parser(sub)
    add_info_parsers(sub)
    add_serve_parser(sub)
    add_bench_parser(sub)
    add_lite_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    logging.basicConfig(level=getattr(args, "log_level", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
