"""`lite auto`: walk the quantization ladder, measure each rung, recommend the cheapest one whose
perplexity is within the tolerance of the float model's.

Every rung is written as a model directory and measured by loading it back through the serving
code (eval/forward.DirectModel), so the numbers are those of what would be served.
KV-cache rungs ("kv-int8", "kv-int4" on the float weights, "w4a16-awq+kv-int8") measure the same
weights with attention reading every K/V row as the engine's quantized cache holds it. Among the
rungs within tolerance the cheapest is the one with the fewest weight bytes, then the fewest KV
bytes per token.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

from lmserve.eval.ppl import PplConfig

logger = logging.getLogger(__name__)

WEIGHT_RUNGS = ("fp", "w8a16-rtn", "w4a16-rtn", "w4a16-awq", "w8a8-smoothquant")
KV_RUNGS = {"kv-int8": ("fp", 8), "w4a16-awq+kv-int8": ("w4a16-awq", 8), "kv-int4": ("fp", 4)}
RUNGS = WEIGHT_RUNGS + tuple(KV_RUNGS)


@dataclass(slots=True)
class AutoSettings:
    tolerance: float = 0.02
    group_size: int = 64
    rungs: tuple = RUNGS

    def __post_init__(self):
        if not 0.0 <= self.tolerance < 10.0:
            raise ValueError(f"--tolerance must be in [0, 10) (a fraction: 0.02 = 2%), got {self.tolerance}")
        unknown = [r for r in self.rungs if r not in RUNGS]
        if unknown or "fp" not in self.rungs:
            raise ValueError(f"--rungs must include fp and come from {', '.join(RUNGS)}, got {list(self.rungs)}")


@dataclass(slots=True)
class Rung:
    name: str
    ppl: float
    weight_bytes: int                 # in memory, as served
    fp16_weight_bytes: int            # the same model's parameters at 2 bytes each
    path: str
    kv_bits: int = 0                  # 0: float KV cache
    kv_bytes_per_token: int = 0       # as the engine holds it (float16 for a float cache)
    within_tolerance: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def weight_ratio(self) -> float:
        return self.weight_bytes / self.fp16_weight_bytes


def _build_rung(name: str, model_path, work_dir: str, st: AutoSettings, calib, progress) -> str:
    from lmserve.lite import recipes
    from lmserve.lite.awq import AwqSettings
    path = os.path.join(work_dir, name)
    if name == "w8a16-rtn":
        recipes.rtn(model_path, path, 8, st.group_size)
    elif name == "w4a16-rtn":
        recipes.rtn(model_path, path, 4, st.group_size)
    elif name == "w4a16-awq":
        recipes.auto_awq(model_path, path, AwqSettings(4, st.group_size), calib, progress=progress)
    elif name == "w8a8-smoothquant":
        recipes.smooth_quant(model_path, path, calib, progress=progress)
    return path


def run_ladder(model_path, work_dir: str, dataset: str, st: AutoSettings, ppl_cfg: PplConfig,
               calib, progress: bool = True) -> list[Rung]:
    from lmserve.eval.forward import DirectModel
    from lmserve.eval.ppl import perplexity, read_text_tokens
    from lmserve.model.canonical import count_parameters
    from lmserve.model.loader import load_model
    from lmserve.lite.calibrate import STATS_FILE, calibrate
    os.makedirs(work_dir, exist_ok=True)
    rungs, tokens, paths = [], None, {}
    for name in st.rungs:
        weights, kv_bits = KV_RUNGS.get(name, (name, 0))
        if weights == "fp" and kv_bits:
            # the float weights exactly as the fp rung loads them, with a quantized KV cache
            scorer = DirectModel(load_model(model_path), ppl_cfg.window, quant_policy=kv_bits)
            path = scorer.loaded.model_path
        elif name == "fp":
            from lmserve.lite.calibrate import load_float_model
            scorer = load_float_model(model_path, ppl_cfg.window)
            path = scorer.loaded.model_path
            needs_calib = any(r in st.rungs for r in ("w4a16-awq", "w8a8-smoothquant", "w4a16-awq+kv-int8"))
            if needs_calib and not calib.stats_path:   # one calibration pass serves every rung
                stats_dir = os.path.join(work_dir, "calibration")
                _, _ = calibrate(model_path, calib.dataset, calib.samples, calib.seqlen,
                                 stats_dir, progress)
                calib.stats_path = os.path.join(stats_dir, STATS_FILE)
        else:
            if weights not in paths:         # "w4a16-awq+kv-int8" reuses the w4a16-awq model
                paths[weights] = _build_rung(weights, model_path, work_dir, st, calib, progress)
            path = paths[weights]
            scorer = DirectModel.load(path, ppl_cfg.window, quant_policy=kv_bits)
        if tokens is None:
            tokens = read_text_tokens(scorer.tokenizer, dataset)
        result = perplexity(scorer, tokens, ppl_cfg, progress)
        fp16 = count_parameters(scorer.config) * 2
        weight_bytes = fp16 if weights == "fp" else result.weight_bytes
        rungs.append(Rung(name, result.ppl, weight_bytes, fp16, path, kv_bits, scorer.kv_bytes_per_token()))
        logger.info("%s: ppl %.4f, %d weight bytes", name, result.ppl, weight_bytes)
        del scorer
    limit = rungs[0].ppl * (1 + st.tolerance)
    for r in rungs:
        r.within_tolerance = r.ppl <= limit
    return rungs


def recommend(rungs: list[Rung]) -> Rung:
    ok = [r for r in rungs if r.within_tolerance]
    return min(ok, key=lambda r: (r.weight_bytes, r.kv_bytes_per_token))


def format_table(rungs: list[Rung], tolerance: float) -> str:
    fp = rungs[0].ppl
    lines = [f"{'recipe':<18} {'ppl':>9} {'vs fp':>8} {'weight MB':>10} {'of fp16':>8} {'KV B/token':>11}"
             f"  within {tolerance:.1%}"]
    for r in rungs:
        lines.append(f"{r.name:<18} {r.ppl:>9.3f} {r.ppl / fp - 1:>+8.2%} {r.weight_bytes / 1e6:>10.1f} "
                     f"{r.weight_ratio:>8.1%} {r.kv_bytes_per_token:>11,}  "
                     f"{'yes' if r.within_tolerance else 'no'}")
    lines.append("KV B/token: float16 for a float cache; int8/int4 include the fp16 scale and zero "
                 "of every token and head; kv-int4 rows are Hadamard-rotated")
    best = recommend(rungs)
    lines.append(f"recommended: {best.name} ({best.path})")
    return "\n".join(lines)


def to_json(rungs: list[Rung]) -> dict:
    return {"rungs": [dict(asdict(r), weight_ratio=r.weight_ratio) for r in rungs],
            "recommended": recommend(rungs).name}
