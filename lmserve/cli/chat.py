"""`lmserve chat`: a terminal chat that streams tokens and keeps the session's KV between turns.

Enter sends; `exit` quits; `end` starts a new session; Ctrl-C stops the current answer only.
"""
from __future__ import annotations

import sys

from lmserve.cli.args import (add_engine_args, add_gen_args, chat_template_config_from_args,
                              engine_config_from_args, gen_config_from_args)


def add_chat_parser(subparsers) -> None:
    p = subparsers.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("model_path", nargs="?", default=None,
                   help="HF directory, .gguf file, or a named shape with --load-format dummy "
                        "(default: the embedded SmolLM2-135M-Instruct)")
    add_engine_args(p)
    add_gen_args(p)
    p.set_defaults(func=run_chat)


def run_chat(args) -> None:
    from lmserve.api import pipeline
    try:
        pipe = pipeline(args.model_path, engine_config_from_args(args), chat_template_config_from_args(args),
                        log_level=args.log_level)
    except (ValueError, FileNotFoundError) as e:    # e.g. a --tp this model cannot be split by
        raise SystemExit(f"lmserve chat: {e}") from e
    gen = gen_config_from_args(args)
    print(f"model: {pipe.model_name}\n{pipe.engine.cache_summary()}")
    print("Type a message and press Enter. `end` starts a new session, `exit` quits, Ctrl-C stops an answer.")
    session = None
    try:
        while True:
            try:
                prompt = input("\n>>> ")
            except EOFError:
                break
            if prompt.strip() == "exit":
                break
            if prompt.strip() == "end":
                if session is not None:
                    pipe.end_session(session.session_id)
                session = None
                print("(new session)")
                continue
            if not prompt.strip():
                continue
            session = _answer(pipe, prompt, session, gen)
    finally:
        pipe.close()


def _answer(pipe, prompt, session, gen):
    session = session or pipe.new_session()
    stream = pipe.chat(prompt, session, gen, stream_response=True)
    try:
        for part in stream:
            sys.stdout.write(part.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        # Stop this answer only: abort it on the engine, keep the program and the session going.
        stream.close()
        print("\n(stopped)")
        return session
    except ValueError as e:     # e.g. the conversation outgrew --session-len
        session.history.pop()
        print(f"\nerror: {e}")
        return session
    print()
    return session

