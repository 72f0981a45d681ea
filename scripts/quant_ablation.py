"""Perplexity of quantization variants built in memory from one `lite calibrate` output, without
writing checkpoints (the numbers marked "in memory" in docs/quantization.md). Linears are served
as QuantWeight, the embedding/head as 8-bit round-to-nearest, as `--embedding-bits 8` files are.

    STATS=./calib/calibration.pt python3 scripts/quant_ablation.py TEXT WINDOWS SPEC [SPEC...]

SPEC is METHOD:QKV,O,GATE_UP,DOWN with METHOD awq (AWQ, nearest rounding), awq_gptq (AWQ scales,
GPTQ rounding) or gptq (GPTQ only), then the first-token (attention sink) weight of each input.
"""
import os
import sys

import torch

from lmserve.eval.ppl import PplConfig, perplexity, read_text_tokens
from lmserve.kernels.quant_weight import QuantWeight
from lmserve.lite.awq import AwqSettings
from lmserve.lite.calibrate import load_float_model
from lmserve.lite.quantize_model import awq_layer, float_weights, gptq_layer
from lmserve.model.llama import LlamaForCausalLM


def main(text: str, windows: int, specs: list[str]) -> None:
    stats = torch.load(os.environ.get("STATS", "calib/calibration.pt"), weights_only=False)
    scorer = load_float_model(None, 512)
    cfg = scorer.config
    weights = float_weights(scorer.loaded)
    tokens = read_text_tokens(scorer.tokenizer, text)

    def ppl(tensors) -> float:
        m = LlamaForCausalLM(cfg, torch.float32, 512)

        def served(name, v):
            if hasattr(v, "to_quant_weight"):
                return v.to_quant_weight()
            if name == "model.embed_tokens.weight":
                return QuantWeight.quantize(v.half().float(), 8, 64)
            return v
        m.load_weights((k, served(k, v)) for k, v in tensors.items())
        scorer.model = m
        return perplexity(scorer, tokens, PplConfig(512, None, windows), False).ppl

    for spec in specs:
        method, ws = spec.split(":")
        ws = dict(zip(("qkv", "o", "gate_up", "down"), map(float, ws.split(","))))
        st = AwqSettings(4, 64, rounding="gptq" if "gptq" in method else "nearest")
        layer_fn = gptq_layer if method == "gptq" else awq_layer
        tensors = dict(weights)
        for i in range(cfg.num_layers):
            s = {k: {**v, "gram": v["gram"] + (ws[k] - 1) * v["first"]}
                 for k, v in stats["layers"][i].items()}
            tensors.update(layer_fn(tensors, i, s, cfg, st)[0])
        print(spec, round(ppl(tensors), 3), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
