"""Perplexity of a model over a text file, with fixed windows and a stride (HF's sliding-window recipe).

The text is tokenized whole (no special tokens added). Windows of `window` tokens start every
`stride` tokens; each window scores only the tokens the previous one did not, so with
stride < window every token but the first is scored exactly once, with at least window - stride
tokens of context. stride == window (the default) gives independent windows, each of which scores
all its tokens but its first (which has no context in the window).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PplConfig:
    window: int = 512
    stride: int | None = None           # None: equal to window
    max_windows: int | None = None      # None: the whole text

    def __post_init__(self):
        if self.window < 2:
            raise ValueError(f"--window must be at least 2, got {self.window}")
        if self.stride is None:
            self.stride = self.window
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"--stride must be in [1, --window={self.window}], got {self.stride}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"--max-windows must be at least 1, got {self.max_windows}")


@dataclass(slots=True)
class PplResult:
    ppl: float
    nll: float                  # mean negative log-likelihood per scored token, nats
    tokens_scored: int
    windows: int
    window: int
    stride: int
    seconds: float
    weight_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def windows(num_tokens: int, cfg: PplConfig) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window; positions index the token list."""
    out, prev_end = [], 0
    for begin in range(0, max(num_tokens - 1, 1), cfg.stride):
        end = min(begin + cfg.window, num_tokens)
        first = max(prev_end, begin + 1)        # the first token of the text has no context
        if end - begin >= 2 and first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == num_tokens or (cfg.max_windows and len(out) >= cfg.max_windows):
            break
    return out


def perplexity(scorer, token_ids: list[int], cfg: PplConfig, progress: bool = True) -> PplResult:
    """scorer: a DirectModel (anything with token_logprobs(ids) and weight_bytes())."""
    from tqdm import tqdm
    spans = windows(len(token_ids), cfg)
    if not spans:
        raise ValueError(f"the text has {len(token_ids)} tokens; perplexity needs at least 2")
    ids = torch.tensor(token_ids, dtype=torch.long)
    total, count, start = 0.0, 0, time.perf_counter()
    bar = tqdm(spans, desc="ppl", unit="window", disable=not progress)
    for begin, end, first in bar:
        logp = scorer.token_logprobs(ids[begin:end])    # logp[j] scores position begin + j + 1
        scored = logp[first - begin - 1:]
        total -= scored.double().sum().item()
        count += scored.numel()
        bar.set_postfix(ppl=f"{math.exp(total / count):.3f}")
    nll = total / count
    return PplResult(ppl=math.exp(nll), nll=nll, tokens_scored=count, windows=len(spans),
                     window=cfg.window, stride=cfg.stride, seconds=time.perf_counter() - start,
                     weight_bytes=scorer.weight_bytes())


def read_text_tokens(tokenizer, path: str) -> list[int]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"--dataset {path} is empty")
    return tokenizer.encode(text, add_special_tokens=False)
