"""`python -m lmserve.serve api_server ...` / `api_client URL`: the same as `lmserve serve ...`,
for when the console script is not installed."""
from __future__ import annotations

import argparse
import sys

from lmserve.cli.serve import add_serve_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmserve.serve")
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
