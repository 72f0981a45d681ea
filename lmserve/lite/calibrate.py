"""`lite calibrate`: run calibration text through the float model and record, per linear input,
what the quantizers need.

Per decoder layer and per input (qkv, o, gate_up, down; q/k/v share one input, as do gate/up):
  absmax [in]   per-channel max |x|            (SmoothQuant's migration strength)
  absmean [in]  per-channel mean |x|           (AWQ's activation-aware scale)
  gram [in,in]  sum over tokens of x x^T       (the exact output error of any weight change
                                                dW over all calibration tokens is tr(dW G dW^T))
  first [in,in] the same over each sample's first token only: that token is the attention sink
                most later tokens attend to, so its errors weigh more (see AwqSettings.sink_weight)
The float model is our own serving model with forward hooks, so GGUF files and HF directories
calibrate alike and calibration sees exactly the activations the engine computes.
"""
from __future__ import annotations

import logging
import os
import time

import torch

logger = logging.getLogger(__name__)

INPUTS = {"qkv": "qkv_proj", "o": "o_proj", "gate_up": "gate_up_proj", "down": "down_proj"}
STATS_FILE = "calibration.pt"


class _InputRecorder:
    def __init__(self, in_features: int):
        self.absmax = torch.zeros(in_features)
        self.abssum = torch.zeros(in_features, dtype=torch.float64)
        self.gram = torch.zeros(in_features, in_features)
        self.first = torch.zeros(in_features, in_features)
        self.count = 0

    def __call__(self, module, args) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        self.abssum += x.abs().sum(0, dtype=torch.float64)
        self.gram.addmm_(x.t(), x)
        self.first.addmm_(x[:1].t(), x[:1])          # hooks see one sequence per call
        self.count += x.shape[0]

    def result(self) -> dict:
        return {"absmax": self.absmax, "absmean": (self.abssum / max(self.count, 1)).float(),
                "gram": self.gram, "first": self.first, "tokens": self.count}


def collect_statistics(scorer, samples: list[list[int]], progress: bool = True) -> dict:
    """scorer: a float DirectModel. -> {"layers": [{input: stats}], "tokens": n}."""
    from tqdm import tqdm
    recorders, handles = [], []
    for layer in scorer.model.layers:
        per_layer = {}
        for key, attr in INPUTS.items():
            module = getattr(layer, attr)
            per_layer[key] = _InputRecorder(module.in_features)
            handles.append(module.register_forward_pre_hook(per_layer[key]))
        recorders.append(per_layer)
    try:
        for ids in tqdm(samples, desc="calibrate", unit="sample", disable=not progress):
            scorer.hidden_states(ids)
    finally:
        for h in handles:
            h.remove()
    return {"layers": [{k: r.result() for k, r in per_layer.items()} for per_layer in recorders],
            "tokens": sum(len(s) for s in samples)}


def load_float_model(model_path: str | None, max_tokens: int):
    """Our model with float weights (a GGUF's blocks are dequantized): what quantizers start from."""
    from lmserve.eval.forward import DirectModel
    from lmserve.model.loader import load_model
    loaded = load_model(model_path)
    quant = loaded.config.quantization
    if quant and quant.get("quant_method") != "gguf":
        raise ValueError(f"{model_path} is already quantized ({quant.get('quant_method')}); "
                         f"calibrate and quantize the float model instead")
    return DirectModel(loaded, max_tokens)


def calibrate(model_path: str | None, calib_dataset: str, calib_samples: int, calib_seqlen: int,
              work_dir: str | None = None, progress: bool = True, scorer=None) -> tuple[object, dict]:
    """-> (the float DirectModel, statistics); the statistics are saved to work_dir when given."""
    from lmserve.lite.calib_data import calibration_samples
    start = time.perf_counter()
    scorer = scorer or load_float_model(model_path, calib_seqlen)
    samples = calibration_samples(scorer.tokenizer, calib_dataset, calib_samples, calib_seqlen)
    stats = collect_statistics(scorer, samples, progress)
    stats.update(dataset=calib_dataset, samples=len(samples), seqlen=calib_seqlen,
                 seconds=time.perf_counter() - start)
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
        torch.save(stats, os.path.join(work_dir, STATS_FILE))
    return scorer, stats
