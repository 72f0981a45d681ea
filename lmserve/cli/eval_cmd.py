"""`lmserve eval ppl`: perplexity of a model (float, GGUF or quantized) over a text file."""
from __future__ import annotations

import json
import sys

from lmserve.cli.args import add_flag, add_kv_quant_args, quant_policy_from_args


def add_eval_parser(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="measure a model's accuracy")
    sub = ev.add_subparsers(dest="eval_command", metavar="METRIC")
    p = sub.add_parser("ppl", help="perplexity over a text file (fixed windows and stride)")
    p.add_argument("model_path", nargs="?", default=None,
                   help="HF directory (quantized too) or .gguf file (default: the embedded model)")
    add_flag(p, "dataset", required=True, help="a text file, e.g. ../shared/data/wikitext2_test.txt")
    add_flag(p, "window", type=int, default=512, help="tokens per window")
    add_flag(p, "stride", type=int, default=None, help="tokens between window starts (default: --window)")
    add_flag(p, "max_windows", type=int, default=None, help="stop after this many windows")
    add_flag(p, "dequantize_gguf", action="store_true", help="run a GGUF's low-bit weights as floats")
    add_kv_quant_args(p)
    add_flag(p, "json", default=None, help="also write the result to this JSON file ('-' for stdout)")
    add_flag(p, "log_level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run_ppl)
    ev.set_defaults(func=lambda args: (ev.print_help(), sys.exit(2)))


def run_ppl(args) -> None:
    from lmserve.eval.forward import DirectModel
    from lmserve.eval.ppl import PplConfig, perplexity, read_text_tokens
    try:
        cfg = PplConfig(args.window, args.stride, args.max_windows)
        quant_policy = quant_policy_from_args(args)
        scorer = DirectModel.load(args.model_path, cfg.window, low_bit_gguf=not args.dequantize_gguf,
                                  quant_policy=quant_policy, kv_rotation=args.kv_rotation)
        result = perplexity(scorer, read_text_tokens(scorer.tokenizer, args.dataset), cfg)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    name = scorer.loaded.model_name
    kv = (f"int{quant_policy}{'+rot' if scorer.kv_rotated else ''}" if quant_policy else "float")
    print(f"{'model':<28} {'KV':>9} {'ppl':>9} {'tokens':>8} {'windows':>8} {'window/stride':>14} "
          f"{'weight MB':>10} {'s':>7}")
    print(f"{name[:28]:<28} {kv:>9} {result.ppl:>9.4f} {result.tokens_scored:>8} {result.windows:>8} "
          f"{f'{result.window}/{result.stride}':>14} {result.weight_bytes / 1e6:>10.1f} {result.seconds:>7.1f}")
    if args.json:
        payload = dict(result.to_dict(), model=scorer.loaded.model_path, dataset=args.dataset,
                       quant_policy=quant_policy, kv_rotated=scorer.kv_rotated,
                       kv_bytes_per_token=scorer.kv_bytes_per_token())
        if args.json == "-":
            print(json.dumps(payload))
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(payload, f, indent=2)
