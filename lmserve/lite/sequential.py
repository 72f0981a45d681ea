"""Layer-by-layer calibration and quantization: each layer's statistics come from the model whose
earlier layers are already quantized, so a layer's search sees (and corrects for) the inputs it
will really get when served, not the float model's. This is how GPTQ runs, and how AutoAWQ
walks its layers.

The calibration samples' hidden states are kept between layers (samples x tokens x hidden x 2
floats: 38 MB for 16 x 512 tokens of a 576-wide model). Per layer: (1) the float layer runs on
them with hooks recording its four inputs' statistics; (2) `layer_fn` (awq_layer / gptq_layer)
quantizes it from those; (3) the quantized layer runs on them to give the next layer's inputs.
So calibration costs two forward passes instead of one, and its statistics cannot be reused by
another run (`--calib-stats`), since they depend on the quantization itself.
"""
from __future__ import annotations

import logging
import re

import torch

from lmserve.lite.block_loss import BlockInputs
from lmserve.lite.calibrate import INPUTS, _InputRecorder
from lmserve.nn.attention import AttentionMetadata, PrefillChunk

logger = logging.getLogger(__name__)

_LAYER_PART = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def _load_layer(layer, index: int, tensors: dict) -> None:
    """Put layer `index`'s entries of `tensors` (floats or GroupQuants, served as their
    dequantized floats so the pass computes exactly what the quantized model will) into `layer`."""
    from lmserve.model.llama import _SHARDS
    for name, value in tensors.items():
        m = _LAYER_PART.match(name)
        if not m or int(m.group(1)) != index:
            continue
        part, kind = m.group(2), m.group(3)
        t = value if isinstance(value, torch.Tensor) else value.dequantize()
        if part in ("input_layernorm", "post_attention_layernorm"):
            getattr(layer, part).weight.data.copy_(t)
        else:
            module, shard = _SHARDS[part]
            getattr(layer, module).load_shard(shard, t, kind)


class LayerRunner:
    """Runs one decoder layer of a DirectModel on every stored sample."""

    def __init__(self, scorer, samples: list[list[int]], embedding: tuple[int, int] | None = None):
        """embedding: (bits, group_size) when the served model quantizes its embedding table at
        load (lmserve_embedding), so that the first layer sees the rows it will be served."""
        model = scorer.model
        self.model, self.kv_caches = model, scorer.kv_caches
        self.states = []
        self.inputs = []
        table = None
        if embedding is not None:
            from lmserve.kernels.quant_weight import QuantWeight
            table = QuantWeight.quantize(model.embed_tokens.weight.float(), *embedding)
        with torch.inference_mode():
            for ids in samples:
                ids = torch.as_tensor(ids, dtype=torch.long)
                n = ids.numel()
                meta = AttentionMetadata(slot_mapping=torch.arange(n),
                                         prefills=[PrefillChunk(0, n, n, torch.zeros(1, dtype=torch.long))])
                cos_sin = model.rotary.cos_sin(torch.arange(n), model.dtype)
                self.inputs.append((cos_sin, meta))
                rows = model.embed_tokens(ids) if table is None else table.take_rows(ids)
                self.states.append((rows.to(model.dtype), None))

    @torch.inference_mode()
    def run(self, index: int, advance: bool) -> None:
        """One pass of layer `index` over every sample; advance: keep its outputs as the next
        layer's inputs."""
        layer = self.model.layers[index]
        for k, ((cos_sin, meta), (hidden, residual)) in enumerate(zip(self.inputs, self.states)):
            out = layer(cos_sin, hidden, residual, self.kv_caches[index], meta)
            if advance:
                self.states[k] = out

    def record(self, index: int, keep: int = 0, advance: bool = False) -> dict:
        """Statistics of layer `index`'s four linear inputs on the current hidden states.
        keep: also store the attention and MLP inputs of the first `keep` samples (as "block",
        a BlockInputs) for --loss block. advance: keep this pass's outputs as the next inputs."""
        layer = self.model.layers[index]
        recorders, handles = {}, []
        for key, attr in INPUTS.items():
            module = getattr(layer, attr)
            recorders[key] = _InputRecorder(module.in_features)
            handles.append(module.register_forward_pre_hook(recorders[key]))
        kept = {"qkv": [], "gate_up": []}
        for key in kept if keep else ():
            def store(module, args, rows=kept[key]):
                if len(rows) < keep:
                    rows.append(args[0].detach().float().clone())
            handles.append(getattr(layer, INPUTS[key]).register_forward_pre_hook(store))
        try:
            self.run(index, advance=advance)
        finally:
            for h in handles:
                h.remove()
        stats = {k: r.result() for k, r in recorders.items()}
        if keep:
            cos_sin = [tuple(t.float() for t in c) for c, _ in self.inputs[:keep]]
            stats["block"] = BlockInputs(list(zip(kept["qkv"], cos_sin)), torch.cat(kept["gate_up"]))
        return stats


def quantize_sequential(scorer, samples: list[list[int]], weights: dict, st, layer_fn,
                        progress: bool = True, embedding_bits: int | None = None) -> dict:
    """scorer: the float DirectModel (its layers are overwritten with the quantized ones as the
    walk goes: do not use it as a float model afterwards). weights: float canonical tensors.
    embedding_bits: 4 or 8 when the embedding will be served quantized (None or 16: float).
    st.sequential False (only with --loss block, which needs the activations this walk keeps):
    every layer's inputs come from the float model, as in AutoAWQ, whose next-layer inputs are
    the float layer's outputs computed before that layer is scaled and quantized.
    -> canonical tensors with every layer quantized (as quantize_model.quantize_awq returns)."""
    from tqdm import tqdm
    from lmserve.lite.quantize_model import check_model_group_size
    cfg = scorer.config
    check_model_group_size(cfg, st.w_group_size)
    result = dict(weights)
    quantized_inputs = st.sequential
    emb = (embedding_bits, st.w_group_size) if embedding_bits in (4, 8) and quantized_inputs else None
    keep = min(st.block_samples, len(samples)) if st.loss == "block" else 0
    runner = LayerRunner(scorer, samples, emb)
    bar = tqdm(range(cfg.num_layers), desc="sequential" if quantized_inputs else "layers",
               unit="layer", disable=not progress)
    for i in bar:
        stats = runner.record(i, keep, advance=not quantized_inputs)
        quantized, report = layer_fn(result, i, stats, cfg, st)
        result.update(quantized)
        if quantized_inputs:
            _load_layer(scorer.model.layers[i], i, result)
            runner.run(i, advance=True)
        bar.set_postfix({k: f"{v:.2f}" for k, v in report.items()})
        logger.info("layer %d: output error vs RTN %s", i, {k: round(v, 3) for k, v in report.items()})
    return result
