"""`--load-format dummy`: random weights of a real model's shape, for benchmarks and architecture tests.

Tensors are generated lazily, one at a time, each from its own seed (derived from the run's seed
and the tensor's position), so a 7B model never exists in memory as a whole inside the loader,
re-streaming yields identical values, and a consumer reading only the first few tensors pays only
for those. Linear weights and biases are N(0, 0.02) like HF's initializer; norm weights are ones.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator

import torch

from lmserve.model.canonical import canonical_weights, is_norm_weight
from lmserve.model.config import ModelConfig
from lmserve.model.families import config_from_hf
from lmserve.model.loaded_model import LoadedModel, WeightStream
from lmserve.model.named_shapes import NAMED_SHAPES

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DUMMY_STD = 0.02


def named_shape_config(name: str) -> ModelConfig:
    key = name.lower()
    if key not in NAMED_SHAPES:
        raise ValueError(f"unknown model shape {name!r}; named shapes: {', '.join(NAMED_SHAPES)}")
    return config_from_hf(NAMED_SHAPES[key], f"named shape {key}")[1]


def dummy_weights(config: ModelConfig, seed: int = 0) -> WeightStream:
    specs = canonical_weights(config)
    dtype = _DTYPES.get(config.torch_dtype, torch.float32)

    def stream() -> Iterator[tuple[str, torch.Tensor]]:
        for index, (name, shape) in enumerate(specs):
            if is_norm_weight(name):
                yield name, torch.ones(shape, dtype=dtype)
                continue
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            yield name, torch.empty(shape, dtype=dtype).normal_(0.0, DUMMY_STD, generator=generator)

    return stream


def load_dummy(kind: str, path: str, seed: int = 0) -> LoadedModel:
    """kind: "named" (path is a shape name), "gguf" (a .gguf file), "hf" (a model directory or the
    path of a config.json). The tokenizer is the model's own when it has one, else the default
    model's, so that a shape-only benchmark can still encode prompts."""
    from lmserve.model.loader import default_tokenizer
    generation: dict = {}
    tokenizer = None
    if kind == "named":
        config = named_shape_config(path)
        name = path.lower()
    elif kind == "gguf":
        from lmserve.model.gguf_file import GGUFFile
        from lmserve.model.gguf_loader import gguf_config, load_gguf_tokenizer
        config = gguf_config(GGUFFile(path))
        tokenizer = load_gguf_tokenizer(path)
        name = os.path.splitext(os.path.basename(path))[0]
    elif kind == "hf":
        from lmserve.model.hf_loader import (GENERATION_KEYS, has_tokenizer, load_hf_tokenizer,
                                             merge_generation_ids, read_hf_config, read_json)
        folder = os.path.dirname(path) if path.endswith(".json") else path
        _, config, _ = read_hf_config(path)
        gen = read_json(os.path.join(folder, "generation_config.json"), missing_ok=True) or {}
        merge_generation_ids(config, gen)
        generation = {k: gen[k] for k in GENERATION_KEYS if gen.get(k) is not None}
        tokenizer = load_hf_tokenizer(folder) if has_tokenizer(folder) else None
        name = os.path.basename(os.path.normpath(folder))
    else:
        raise ValueError(f"load_dummy: kind must be named, gguf or hf, got {kind!r}")
    config.quantization = None      # random weights are never quantized, whatever the config says
    if tokenizer is None:
        tokenizer = default_tokenizer()
        if len(tokenizer) > config.vocab_size:
            logger.warning("dummy %s: the default tokenizer has %d tokens but the model only %d; "
                           "prompts may produce ids outside the vocabulary", name, len(tokenizer),
                           config.vocab_size)
    return LoadedModel(config=config, weights=dummy_weights(config, seed), tokenizer=tokenizer,
                       chat_template=getattr(tokenizer, "chat_template", None),
                       generation_defaults=generation, model_path=path, model_name=name)
