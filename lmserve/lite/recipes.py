"""The `lite` recipes end to end: model path in, quantized HF directory out.

    auto_awq(model, "./model-4bit", AwqSettings(4, 64))      # AWQ, AutoAWQ GEMM format (4-bit)
    auto_awq(model, "./model-w8", AwqSettings(8, 64))        # AWQ-scaled W8A16, GPTQ format
    rtn(model, "./model-rtn", 4, 64)                         # round-to-nearest, no calibration
    smooth_quant(model, "./model-w8a8")                      # SmoothQuant W8A8
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

from lmserve.lite.awq import AwqSettings
from lmserve.lite.export import write_model
from lmserve.lite.pack import pack_awq, pack_gptq

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class CalibSettings:
    dataset: str = "wikitext2"
    samples: int = 128
    seqlen: int = 2048
    stats_path: str | None = None      # reuse the statistics of an earlier `lite calibrate`


def quant_config(bits: int, group_size: int, embedding_bits: int | None,
                 file_format: str = "awq") -> dict:
    """file_format: awq (4-bit AutoAWQ GEMM; 8-bit always goes to the GPTQ format) or gptq."""
    if bits == 4 and file_format == "awq":
        cfg = {"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": group_size,
               "zero_point": True}
    else:
        cfg = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False,
               "sym": bits == 8, "checkpoint_format": "gptq"}
    if embedding_bits in (4, 8):
        cfg["lmserve_embedding"] = {"bits": embedding_bits, "group_size": group_size}
    elif embedding_bits not in (None, 16):
        raise ValueError(f"--embedding-bits must be 4, 8 or 16, got {embedding_bits}")
    return cfg


def _statistics(model_path, calib: CalibSettings, progress: bool):
    """-> (loaded float model description, statistics), freeing the calibration model after."""
    from lmserve.lite.calibrate import calibrate
    if calib.stats_path:
        from lmserve.model.loader import load_model
        loaded = load_model(model_path)
        path = calib.stats_path
        if os.path.isdir(path):
            from lmserve.lite.calibrate import STATS_FILE
            path = os.path.join(path, STATS_FILE)
        stats = torch.load(path, weights_only=False)
        if len(stats["layers"]) != loaded.config.num_layers:
            raise ValueError(f"--calib-stats {calib.stats_path} is for a model with "
                             f"{len(stats['layers'])} layers, this one has {loaded.config.num_layers}")
        return loaded, stats
    scorer, stats = calibrate(model_path, calib.dataset, calib.samples, calib.seqlen,
                              progress=progress)
    return scorer.loaded, stats


def auto_awq(model_path, work_dir: str, settings: AwqSettings, calib: CalibSettings,
             embedding_bits: int | None = None, progress: bool = True) -> dict:
    from lmserve.lite.quantize_model import awq_layer
    return _quantize(model_path, work_dir, settings, calib, embedding_bits, progress, awq_layer, "awq")


def auto_gptq(model_path, work_dir: str, settings: AwqSettings, calib: CalibSettings,
              embedding_bits: int | None = None, progress: bool = True) -> dict:
    """GPTQ rounding without AWQ scales (settings: w_bits, w_group_size, damp, sequential),
    written in the AutoGPTQ format (4-bit asymmetric with z >= 1, as its z - 1 storage needs)."""
    from functools import partial
    from lmserve.lite.quantize_model import gptq_layer
    layer_fn = partial(gptq_layer, min_zero=1 if settings.w_bits == 4 else 0)
    return _quantize(model_path, work_dir, settings, calib, embedding_bits, progress, layer_fn, "gptq")


def _quantize(model_path, work_dir, settings: AwqSettings, calib: CalibSettings, embedding_bits,
              progress: bool, layer_fn, file_format: str) -> dict:
    from lmserve.lite.quantize_model import check_model_group_size, float_weights, quantize_awq
    from lmserve.model.loader import load_model
    start = time.perf_counter()
    check_model_group_size(load_model(model_path).config, settings.w_group_size)
    embedding_bits = settings.w_bits if embedding_bits is None else embedding_bits
    if settings.sequential or settings.loss == "block":
        loaded, tensors, tokens = _sequential(model_path, settings, calib, progress, layer_fn,
                                              embedding_bits)
        calibrated = start        # calibration and quantization interleave
    else:
        loaded, stats = _statistics(model_path, calib, progress)
        calibrated, tokens = time.perf_counter(), stats["tokens"]
        tensors = quantize_awq(float_weights(loaded), stats, loaded.config, settings, progress,
                               layer_fn)
    qcfg = quant_config(settings.w_bits, settings.w_group_size, embedding_bits, file_format)
    pack = pack_awq if qcfg["quant_method"] == "awq" else pack_gptq
    write_model(work_dir, loaded, tensors, qcfg, pack)
    end = time.perf_counter()
    return {"calibration_s": calibrated - start, "quantization_s": end - calibrated,
            "total_s": end - start, "tokens": tokens, "work_dir": work_dir}


def _sequential(model_path, settings: AwqSettings, calib: CalibSettings, progress: bool, layer_fn,
                embedding_bits: int):
    from lmserve.lite.calib_data import calibration_samples
    from lmserve.lite.calibrate import load_float_model
    from lmserve.lite.quantize_model import float_weights
    from lmserve.lite.sequential import quantize_sequential
    if calib.stats_path:
        raise ValueError("--sequential and --loss block record their statistics layer by layer "
                         "(--loss block also keeps activations); they cannot reuse --calib-stats")
    scorer = load_float_model(model_path, calib.seqlen)
    samples = calibration_samples(scorer.tokenizer, calib.dataset, calib.samples, calib.seqlen)
    tensors = quantize_sequential(scorer, samples, float_weights(scorer.loaded), settings,
                                  layer_fn, progress, embedding_bits)
    return scorer.loaded, tensors, sum(len(s) for s in samples)


def rtn(model_path, work_dir: str, bits: int, group_size: int,
        embedding_bits: int | None = None) -> dict:
    from lmserve.lite.quantize_model import float_weights, quantize_rtn
    from lmserve.model.loader import load_model
    loaded = load_model(model_path)
    tensors = quantize_rtn(float_weights(loaded), loaded.config, bits, group_size)
    qcfg = quant_config(bits, group_size, bits if embedding_bits is None else embedding_bits)
    write_model(work_dir, loaded, tensors, qcfg, pack_awq if bits == 4 else pack_gptq)
    return {"work_dir": work_dir}


def smooth_quant(model_path, work_dir: str, calib: CalibSettings, alpha: float = 0.5,
                 progress: bool = True) -> dict:
    from lmserve.lite.quantize_model import float_weights
    from lmserve.lite.smooth_quant import QUANT_CONFIG, SmoothSettings, pack_w8a8, smooth_quantize
    start = time.perf_counter()
    st = SmoothSettings(alpha)
    loaded, stats = _statistics(model_path, calib, progress)
    tensors = smooth_quantize(float_weights(loaded), stats, loaded.config, st)
    write_model(work_dir, loaded, tensors, dict(QUANT_CONFIG, smooth_alpha=alpha), pack_w8a8)
    return {"total_s": time.perf_counter() - start, "work_dir": work_dir}
