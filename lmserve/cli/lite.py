"""`lmserve lite ...`: offline quantization (calibrate, auto_awq, auto_gptq, smooth_quant, auto)."""
from __future__ import annotations

import json
import sys

from lmserve.cli.args import add_flag


def _add_model(p) -> None:
    p.add_argument("model_path", nargs="?", default=None,
                   help="HF directory or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    add_flag(p, "log_level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _add_calib(p, samples: int = 128, seqlen: int = 2048) -> None:
    add_flag(p, "calib_dataset", default="wikitext2",
             help="a local .txt/.json/.jsonl file, or wikitext2|ptb|c4|pileval (needs `datasets` "
                  "and internet)")
    add_flag(p, "calib_samples", type=int, default=samples)
    add_flag(p, "calib_seqlen", type=int, default=seqlen)
    add_flag(p, "calib_stats", default=None,
             help="reuse the statistics of `lite calibrate` (its --work-dir) instead of calibrating")


def _add_layerwise(p) -> None:
    add_flag(p, "sequential", action="store_true",
             help="record each layer's statistics with the earlier layers already quantized "
                  "(two forward passes; cannot reuse --calib-stats)")
    add_flag(p, "damp", type=float, default=0.01,
             help="GPTQ rounding: damping added to the Gram diagonal, a fraction of its mean")
    add_flag(p, "sink_weight", type=float, default=None,
             help="count each calibration sample's first token (the attention sink) this many "
                  "times in the attention inputs' error (default: 512 for auto_gptq, where 1 "
                  "measured worse than RTN; 1 for auto_awq, where 512 measured no better)")
    add_flag(p, "embedding_bits", type=int, default=None, choices=[4, 8, 16],
             help="embedding/head bits, quantized at load (default: --w-bits; 16 keeps them float)")


def _add_weight_recipe(p) -> None:
    """What the low-bit weight recipes (auto_awq, auto_gptq) share: model, calibration, output, bits."""
    _add_model(p)
    _add_calib(p)
    add_flag(p, "work_dir", required=True, help="output model directory")
    add_flag(p, "w_bits", type=int, default=4, choices=[4, 8])
    add_flag(p, "w_group_size", type=int, default=128, choices=[32, 64, 128])


def add_lite_parser(subparsers) -> None:
    lite = subparsers.add_parser("lite", help="quantize a model (AWQ, W8A16, SmoothQuant W8A8; KV rungs in auto)")
    sub = lite.add_subparsers(dest="lite_command", metavar="RECIPE")

    p = sub.add_parser("calibrate", help="record per-linear activation statistics")
    _add_model(p)
    _add_calib(p)
    add_flag(p, "work_dir", required=True)
    p.set_defaults(func=run_calibrate)

    p = sub.add_parser("auto_awq", help="AWQ 4-bit (AutoAWQ GEMM format) or 8-bit (GPTQ format)")
    _add_weight_recipe(p)
    add_flag(p, "search_grid", type=int, default=40,
             help="points of the scale exponent grid (and half as many clip ratios); AutoAWQ uses 20")
    add_flag(p, "no_clip", action="store_true", help="skip the weight clipping search")
    add_flag(p, "clip_gram", default="full", choices=["block", "full"],
             help="clip search error: diagonal Gram blocks per group, or the full Gram matrix")
    add_flag(p, "scale_form", default="xw", choices=["xw", "x"],
             help="xw: s = mean|x|^a / mean|w|^(1-a); x: AutoAWQ's s = mean|x|^a")
    add_flag(p, "rounding", default="nearest", choices=["nearest", "gptq"],
             help="gptq: GPTQ's error-compensating rounding after the AWQ scales (not AWQ alone)")
    add_flag(p, "loss", default="gram", choices=["gram", "block"],
             help="q/k/v and gate/up scale search error: gram (each linear's output, from Gram "
                  "matrices) or block (AutoAWQ's: the attention / MLP block output, run on stored "
                  "calibration activations; walks the model layer by layer, no --calib-stats)")
    add_flag(p, "block_samples", type=int, default=4,
             help="--loss block: calibration sequences whose activations the blocks are run on")
    _add_layerwise(p)
    p.set_defaults(func=run_auto_awq)

    p = sub.add_parser("auto_gptq", help="GPTQ 4/8-bit (AutoGPTQ format, desc_act false)")
    _add_weight_recipe(p)
    _add_layerwise(p)
    p.set_defaults(func=run_auto_gptq)

    p = sub.add_parser("smooth_quant", help="SmoothQuant W8A8 (int8 weights and activations)")
    _add_model(p)
    _add_calib(p)
    add_flag(p, "work_dir", required=True, help="output model directory")
    add_flag(p, "smooth_alpha", type=float, default=0.5, help="migration strength in [0, 1]")
    p.set_defaults(func=run_smooth_quant)

    p = sub.add_parser("auto", help="measure the quantization ladder and recommend a recipe")
    _add_model(p)
    _add_calib(p)
    add_flag(p, "work_dir", default="./lite-auto")
    add_flag(p, "tolerance", type=float, default=0.02, help="allowed perplexity increase (0.02 = 2%%)")
    add_flag(p, "w_group_size", type=int, default=64, choices=[32, 64, 128])
    add_flag(p, "dataset", required=True, help="text file for perplexity, e.g. wikitext2_test.txt")
    add_flag(p, "window", type=int, default=512)
    add_flag(p, "stride", type=int, default=None)
    add_flag(p, "max_windows", type=int, default=None)
    add_flag(p, "rungs", default=None,
             help="comma-separated subset of the ladder: fp, w8a16-rtn, w4a16-rtn, w4a16-awq, "
                  "w8a8-smoothquant, kv-int8, w4a16-awq+kv-int8, kv-int4 (default: all)")
    add_flag(p, "json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=run_auto)
    lite.set_defaults(func=lambda args: (lite.print_help(), sys.exit(2)))


def _calib(args):
    from lmserve.lite.recipes import CalibSettings
    return CalibSettings(args.calib_dataset, args.calib_samples, args.calib_seqlen, args.calib_stats)


def _fail(e: Exception):
    raise SystemExit(f"error: {e}")


def run_calibrate(args) -> None:
    from lmserve.lite.calibrate import STATS_FILE, calibrate
    try:
        _, stats = calibrate(args.model_path, args.calib_dataset, args.calib_samples,
                             args.calib_seqlen, args.work_dir)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    print(f"calibrated on {stats['samples']} samples x {stats['seqlen']} tokens in "
          f"{stats['seconds']:.1f} s; statistics in {args.work_dir}/{STATS_FILE}")


def run_auto_awq(args) -> None:
    from lmserve.lite.awq import AwqSettings
    from lmserve.lite.recipes import auto_awq
    try:
        st = AwqSettings(args.w_bits, args.w_group_size, args.search_grid, not args.no_clip,
                         scale_form=args.scale_form, rounding=args.rounding,
                         sequential=args.sequential, damp=args.damp,
                         clip_gram=args.clip_gram, loss=args.loss,
                         block_samples=args.block_samples,
                         sink_weight=1.0 if args.sink_weight is None else args.sink_weight)
        info = auto_awq(args.model_path, args.work_dir, st, _calib(args), args.embedding_bits)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    name = "AWQ + GPTQ rounding" if args.rounding == "gptq" else "AWQ"
    _summary(name, args, info)


def run_auto_gptq(args) -> None:
    from lmserve.lite.awq import AwqSettings
    from lmserve.lite.recipes import auto_gptq
    try:
        st = AwqSettings(args.w_bits, args.w_group_size, rounding="gptq",
                         sequential=args.sequential, damp=args.damp,
                         sink_weight=512.0 if args.sink_weight is None else args.sink_weight)
        info = auto_gptq(args.model_path, args.work_dir, st, _calib(args), args.embedding_bits)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    _summary("GPTQ", args, info)


def _summary(name: str, args, info: dict) -> None:
    walk = args.sequential or getattr(args, "loss", "gram") == "block"
    how = "layer-by-layer calibration + quantization" if walk else \
        f"calibration {info['calibration_s']:.1f} s + quantization"
    print(f"{name} {args.w_bits}-bit g{args.w_group_size}: {how} {info['quantization_s']:.1f} s "
          f"= {info['total_s']:.1f} s; model written to {args.work_dir}")


def run_smooth_quant(args) -> None:
    from lmserve.lite.recipes import smooth_quant
    try:
        info = smooth_quant(args.model_path, args.work_dir, _calib(args), args.smooth_alpha)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    print(f"SmoothQuant W8A8 in {info['total_s']:.1f} s; model written to {args.work_dir}")


def run_auto(args) -> None:
    from lmserve.eval.ppl import PplConfig
    from lmserve.lite.auto import RUNGS, AutoSettings, format_table, run_ladder, to_json
    try:
        rungs = tuple(r.strip() for r in args.rungs.split(",")) if args.rungs else RUNGS
        st = AutoSettings(args.tolerance, args.w_group_size, rungs)
        ppl_cfg = PplConfig(args.window, args.stride, args.max_windows)
        results = run_ladder(args.model_path, args.work_dir, args.dataset, st, ppl_cfg, _calib(args))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    print(format_table(results, args.tolerance))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(to_json(results), f, indent=2)
