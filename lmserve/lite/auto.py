"""`lite auto`: walk the quantization ladder, measure each rung, recommend the cheapest one whose
perplexity is within the tolerance of the float model's.

Every rung is written as a model directory and measured by loading it back through the serving
code (eval/forward.DirectModel), so the numbers are those of what would be served.
KV-cache quantization rungs are not offered: the engine has no KV int8/int4 yet.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

from lmserve.eval.ppl import PplConfig

logger = logging.getLogger(__name__)

KV_NOT_AVAILABLE = "KV rows: not available yet (the engine has no KV-cache int8/int4)"
RUNGS = ("fp", "w8a16-rtn", "w4a16-rtn", "w4a16-awq", "w8a8-smoothquant")


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
    from lmserve.lite.calibrate import STATS_FILE, calibrate
    os.makedirs(work_dir, exist_ok=True)
    rungs, tokens = [], None
    for name in st.rungs:
        if name == "fp":
            from lmserve.lite.calibrate import load_float_model
            scorer = load_float_model(model_path, ppl_cfg.window)
            path = scorer.loaded.model_path
            needs_calib = any(r in st.rungs for r in ("w4a16-awq", "w8a8-smoothquant"))
            if needs_calib and not calib.stats_path:   # one calibration pass serves both rungs
                stats_dir = os.path.join(work_dir, "calibration")
                _, _ = calibrate(model_path, calib.dataset, calib.samples, calib.seqlen,
                                 stats_dir, progress)
                calib.stats_path = os.path.join(stats_dir, STATS_FILE)
        else:
            path = _build_rung(name, model_path, work_dir, st, calib, progress)
            scorer = DirectModel.load(path, ppl_cfg.window)
        if tokens is None:
            tokens = read_text_tokens(scorer.tokenizer, dataset)
        result = perplexity(scorer, tokens, ppl_cfg, progress)
        fp16 = count_parameters(scorer.config) * 2
        weight_bytes = fp16 if name == "fp" else result.weight_bytes
        rungs.append(Rung(name, result.ppl, weight_bytes, fp16, path))
        logger.info("%s: ppl %.4f, %d weight bytes", name, result.ppl, weight_bytes)
        del scorer
    limit = rungs[0].ppl * (1 + st.tolerance)
    for r in rungs:
        r.within_tolerance = r.ppl <= limit
    return rungs


def recommend(rungs: list[Rung]) -> Rung:
    ok = [r for r in rungs if r.within_tolerance]
    return min(ok, key=lambda r: r.weight_bytes)


def format_table(rungs: list[Rung], tolerance: float) -> str:
    fp = rungs[0].ppl
    lines = [f"{'recipe':<18} {'ppl':>9} {'vs fp':>8} {'weight MB':>10} {'of fp16':>8}  within {tolerance:.1%}"]
    for r in rungs:
        lines.append(f"{r.name:<18} {r.ppl:>9.3f} {r.ppl / fp - 1:>+8.2%} {r.weight_bytes / 1e6:>10.1f} "
                     f"{r.weight_ratio:>8.1%}  {'yes' if r.within_tolerance else 'no'}")
    lines.append(KV_NOT_AVAILABLE)
    best = recommend(rungs)
    lines.append(f"recommended: {best.name} ({best.path})")
    return "\n".join(lines)


def to_json(rungs: list[Rung]) -> dict:
    return {"rungs": [dict(asdict(r), weight_ratio=r.weight_ratio) for r in rungs],
            "recommended": recommend(rungs).name, "kv_rungs": KV_NOT_AVAILABLE}
