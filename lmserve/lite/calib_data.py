"""Calibration text -> token samples: a local .txt/.json/.jsonl file, or a dataset name when online.

Samples are consecutive `seqlen`-token slices of the tokenized text (the text is joined and cut, as
AWQ and LMDeploy do), taken from the start so runs are reproducible.
"""
from __future__ import annotations

import json
import os

DATASET_NAMES = ("wikitext2", "ptb", "c4", "pileval")
# name -> (datasets.load_dataset args, split, text field)
_HUB = {
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), "train", "text"),
    "ptb": (("ptb_text_only", "penn_treebank"), "train", "sentence"),
    "c4": (("allenai/c4", "en"), "validation", "text"),
    "pileval": (("mit-han-lab/pile-val-backup",), "validation", "text"),
}
_TEXT_KEYS = ("text", "content", "value", "sentence")


def load_calibration_text(source: str) -> str:
    if os.path.exists(source):
        return _read_local(source)
    if source not in DATASET_NAMES:
        raise FileNotFoundError(f"--calib-dataset {source!r} is neither a local file nor one of "
                                f"{', '.join(DATASET_NAMES)}")
    return _read_hub(source)


def _read_local(path: str) -> str:
    if os.path.isdir(path):
        raise ValueError(f"--calib-dataset {path} is a directory; pass a .txt, .json or .jsonl file")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    if path.endswith(".jsonl"):
        texts = [t for line in raw.splitlines() if line.strip() for t in _texts(json.loads(line))]
    elif path.endswith(".json"):
        texts = list(_texts(json.loads(raw)))
    else:
        texts = [raw]
    text = "\n\n".join(t for t in texts if t.strip())
    if not text.strip():
        raise ValueError(f"--calib-dataset {path} holds no text (looked for string fields named "
                         f"{', '.join(_TEXT_KEYS)}, or ShareGPT conversations)")
    return text


def _texts(obj):
    """Strings from a JSON value: plain strings, {text|content|value|sentence: ...} records, and
    ShareGPT conversations ({"conversations": [{"from": ..., "value": ...}]}), nested in lists."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for item in obj:
            yield from _texts(item)
    elif isinstance(obj, dict):
        for key in _TEXT_KEYS:
            if isinstance(obj.get(key), str):
                yield obj[key]
                return
        for key in ("conversations", "messages", "data"):
            if isinstance(obj.get(key), list):
                yield from _texts(obj[key])
                return


def _read_hub(name: str) -> str:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"--calib-dataset {name} needs the `datasets` library (pip install datasets) "
                         f"and internet access; offline, pass a local .txt/.json/.jsonl file instead, "
                         f"e.g. --calib-dataset ../shared/data/wikitext2_test.txt") from None
    args, split, field = _HUB[name]
    try:
        data = datasets.load_dataset(*args, split=split)
    except Exception as e:         # offline, hub down, renamed dataset: all end the same way
        raise ValueError(f"--calib-dataset {name}: could not download it ({type(e).__name__}: "
                         f"{str(e)[:200]}); offline, pass a local .txt/.json/.jsonl file instead") from None
    return "\n\n".join(t for t in data[field][:20000] if t and t.strip())


def calibration_samples(tokenizer, source: str, num_samples: int, seqlen: int) -> list[list[int]]:
    if num_samples < 1:
        raise ValueError(f"--calib-samples must be at least 1, got {num_samples}")
    if seqlen < 2:
        raise ValueError(f"--calib-seqlen must be at least 2, got {seqlen}")
    ids = tokenizer.encode(load_calibration_text(source), add_special_tokens=False)
    samples = [ids[i:i + seqlen] for i in range(0, len(ids) - seqlen + 1, seqlen)][:num_samples]
    if not samples:
        raise ValueError(f"--calib-dataset {source} has {len(ids)} tokens, fewer than one "
                         f"--calib-seqlen {seqlen} sample")
    return samples
