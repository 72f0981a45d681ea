"""What every loader returns: the model description, a re-streamable weight source and the tokenizer."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

import torch

from lmserve.model.canonical import canonical_weights
from lmserve.model.config import ModelConfig
from lmserve.model.gguf_raw import GGUFRawWeight

if TYPE_CHECKING:  # transformers costs ~1 s to import; only the annotation needs it here
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Weight = Union[torch.Tensor, GGUFRawWeight]
WeightStream = Callable[[], Iterator[tuple[str, Weight]]]


@dataclass
class LoadedModel:
    config: ModelConfig
    # Called once per pass; yields (canonical HF-Llama name, tensor) one tensor at a time, so a
    # consumer copying into its own parameters never holds the model twice.
    weights: WeightStream
    tokenizer: "PreTrainedTokenizerBase"
    chat_template: str | None
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    model_path: str = ""
    model_name: str = ""
    # load_model's arguments, so another process (a tensor-parallel worker) can load the same
    # model and stream its own shard; empty for a LoadedModel built by hand
    load_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.config, ModelConfig):
            raise ValueError(f"LoadedModel: config must be a ModelConfig, got {type(self.config).__name__}")
        if not callable(self.weights):
            raise ValueError("LoadedModel: weights must be a callable returning an iterator of "
                             "(name, tensor) pairs, so that the model can be streamed more than once")
        if self.tokenizer is None:
            raise ValueError("LoadedModel: a tokenizer is required")
        if not isinstance(self.generation_defaults, dict):
            raise ValueError("LoadedModel: generation_defaults must be a dict")


def checked_stream(pairs: Iterable[tuple[str, Weight]], config: ModelConfig,
                   source: str) -> Iterator[tuple[str, Weight]]:
    """Pass tensors through, failing loudly on a name or shape the canonical layout does not have,
    and, at the end, on any canonical tensor the checkpoint never provided.

    Quantized checkpoints (AWQ/GPTQ) carry other tensor names and are passed through unchecked.
    """
    if config.quantization and config.quantization.get("quant_method") != "gguf":
        yield from pairs
        return
    expected = dict(canonical_weights(config))
    seen: set[str] = set()
    for name, tensor in pairs:
        if name not in expected:
            raise ValueError(f"{source}: tensor {name!r} is not part of a {config.family} model with "
                             f"this config (qkv_bias={config.qkv_bias}, o_bias={config.o_bias}, "
                             f"tie_word_embeddings={config.tie_word_embeddings})")
        if name in seen:
            raise ValueError(f"{source}: tensor {name!r} appears twice")
        shape = tuple(tensor.shape)
        if shape != expected[name]:
            raise ValueError(f"{source}: tensor {name!r} has shape {shape}, the config implies "
                             f"{expected[name]}")
        seen.add(name)
        yield name, tensor
    missing = [n for n in expected if n not in seen]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{source}: the checkpoint has no tensor for {', '.join(missing[:5])}{more}")
