"""Hugging Face model directories -> canonical tensors, config, tokenizer, chat template, defaults.

Weights come from *.safetensors (single or sharded with an index) or pytorch_model*.bin (single or
sharded; loaded with weights_only=True and memory-mapped). Tensors are read one at a time and keep
the checkpoint's dtype; the consumer decides what to cast to.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from functools import partial
from typing import Any, Iterator

import torch

from lmserve.model.config import ModelConfig
from lmserve.model.families import Family, config_from_hf
from lmserve.model.loaded_model import LoadedModel, Weight, checked_stream

logger = logging.getLogger(__name__)

_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
# generation_config.json keys that are sampling defaults (the rest are limits or model plumbing)
GENERATION_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                    "max_new_tokens")


def load_hf(path: str) -> LoadedModel:
    family, config, hf_config = read_hf_config(path)
    generation = read_json(os.path.join(path, "generation_config.json"), missing_ok=True) or {}
    merge_generation_ids(config, generation)
    files = weight_files(path)
    if config.quantization:     # an unsupported format fails here, not half-way through loading
        from lmserve.model.quant_checkpoint import check_quant_config
        check_quant_config(config.quantization, path)
    tokenizer = load_hf_tokenizer(path)
    if not config.eos_token_ids and tokenizer.eos_token_id is not None:
        config.eos_token_ids = [tokenizer.eos_token_id]    # old configs without eos_token_id
    template = getattr(tokenizer, "chat_template", None) or _template_from_tokenizer_config(path)
    defaults = {k: generation[k] for k in GENERATION_KEYS if generation.get(k) is not None}
    stream = partial(_stream, files, family, config, path)
    name = os.path.basename(os.path.normpath(path))
    logger.info("%s: %s model, %d weight file(s)", path, config.family, len(files))
    return LoadedModel(config=config, weights=stream, tokenizer=tokenizer, chat_template=template,
                       generation_defaults=defaults, model_path=path, model_name=name)


def read_json(path: str, missing_ok: bool = False) -> dict[str, Any] | None:
    if missing_ok and not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def read_hf_config(path: str) -> tuple[Family, ModelConfig, dict[str, Any]]:
    """Accepts a model directory or the path of a config.json itself."""
    cfg_path = path if path.endswith(".json") else os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path} has no config.json, so it is not a Hugging Face model "
                                f"directory (for a GGUF file pass the .gguf path itself)")
    hf_config = read_json(cfg_path)
    family, config = config_from_hf(hf_config, cfg_path)
    return family, config, hf_config


def merge_generation_ids(config: ModelConfig, generation: dict[str, Any]) -> None:
    """eos ids are the union of config.json's and generation_config.json's (chat models often list
    their end-of-turn token only in the latter)."""
    eos = generation.get("eos_token_id")
    extra = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    config.eos_token_ids = list(dict.fromkeys([*config.eos_token_ids, *map(int, extra)]))
    if config.bos_token_id is None and generation.get("bos_token_id") is not None:
        config.bos_token_id = int(generation["bos_token_id"])


def weight_files(path: str) -> list[str]:
    for index in _INDEXES:
        index_path = os.path.join(path, index)
        if os.path.isfile(index_path):
            shards = sorted(set(read_json(index_path).get("weight_map", {}).values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
            if not shards or missing:
                raise FileNotFoundError(f"{index_path} lists shards that are missing: "
                                        f"{missing or 'none listed'}")
            return [os.path.join(path, s) for s in shards]
    safetensors = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    # Mistral repos also ship consolidated.safetensors, the same weights under Mistral's own names
    preferred = [f for f in safetensors if not os.path.basename(f).startswith("consolidated")]
    if preferred or safetensors:
        return preferred or safetensors
    bins = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
    if bins:
        return bins
    raise FileNotFoundError(f"{path} has a config.json but no weights: looked for *.safetensors, "
                            f"{' or '.join(_INDEXES)}, and pytorch_model*.bin")


def has_tokenizer(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES)


def load_hf_tokenizer(path: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if not has_tokenizer(path):
        raise FileNotFoundError(f"{path} has no tokenizer (looked for {', '.join(_TOKENIZER_FILES)}); "
                                f"copy the tokenizer files of the original model into it")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # custom (remote-code) tokenizer classes, e.g. InternLM's
        fast_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(fast_file):
            raise ValueError(f"{path}: transformers could not build the tokenizer ({e}); lmserve "
                             f"does not run remote code, so the directory needs a tokenizer.json") from e
        logger.warning("%s: AutoTokenizer failed (%s); using tokenizer.json directly", path, e)
        special = read_json(os.path.join(path, "tokenizer_config.json"), missing_ok=True) or {}
        keys = ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template")
        kwargs = {k: special[k] for k in keys if isinstance(special.get(k), str)}
        return PreTrainedTokenizerFast(tokenizer_file=fast_file, **kwargs)


def _template_from_tokenizer_config(path: str) -> str | None:
    cfg = read_json(os.path.join(path, "tokenizer_config.json"), missing_ok=True) or {}
    template = cfg.get("chat_template")
    if isinstance(template, list):   # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    jinja = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    return template


def read_checkpoint_tensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in the files, one at a time, in file order."""
    from safetensors import safe_open
    for path in files:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
            continue
        state = _torch_load(path)
        for name in list(state):
            yield name, state.pop(name)     # drop our reference as we go


def _torch_load(path: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        # files written before torch 1.6's zip format cannot be memory-mapped
        logger.warning("%s cannot be memory-mapped (%s); reading it whole", path, e)
        return torch.load(path, map_location="cpu", weights_only=True)


def _stream(files: list[str], family: Family, config: ModelConfig,
            source: str) -> Iterator[tuple[str, Weight]]:
    pairs = (out for name, tensor in read_checkpoint_tensors(files)
             for out in family.map_tensor(name, tensor, config))
    quant = config.quantization
    if quant and quant.get("quant_method") != "gguf":   # AWQ/GPTQ/W8A8 parts -> low-bit weights
        from lmserve.model.quant_checkpoint import assemble_quantized
        pairs = assemble_quantized(pairs, quant, source)
    return checked_stream(pairs, config, source)
