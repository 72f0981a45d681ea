"""Benchmark requests: prompts with a target output length, from a ShareGPT file or random tokens.

ShareGPT (the format of ShareGPT_V3_unfiltered_cleaned_split.json: a list of `{"id", "conversations":
[{"from": "human"|"gpt", "value"}, ...]}`): the first human turn is the prompt, the first reply
after it gives the output length in tokens. Conversations are taken in file order, so the first N
usable ones are what `--num-prompts N` runs. The usual filters drop a prompt shorter than 4 tokens,
an output shorter than 4 tokens, and a prompt plus output longer than the session length.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

MIN_TOKENS = 4


@dataclass(slots=True)
class SampleRequest:
    prompt: str
    prompt_ids: list[int]
    output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


@dataclass(slots=True)
class DatasetReport:
    """How many conversations were read and why the others were left out (printed by the CLI)."""
    read: int = 0
    kept: int = 0
    no_human_turn: int = 0
    no_reply: int = 0
    too_short: int = 0
    too_long: int = 0

    def line(self) -> str:
        dropped = {"no human turn": self.no_human_turn, "no reply and no --sharegpt-output-len": self.no_reply,
                   f"prompt or output < {MIN_TOKENS} tokens": self.too_short, "longer than the session": self.too_long}
        why = ", ".join(f"{n} {reason}" for reason, n in dropped.items() if n)
        return f"dataset: {self.kept} requests from {self.read} conversations" + (f" (dropped: {why})" if why else "")


def _first_exchange(conversation: list[dict]) -> tuple[str | None, str | None]:
    """The first human turn and the reply that follows it (None where missing)."""
    for i, turn in enumerate(conversation):
        if turn.get("from") in ("human", "user") and isinstance(turn.get("value"), str):
            reply = conversation[i + 1] if i + 1 < len(conversation) else None
            return turn["value"], reply.get("value") if reply and isinstance(reply.get("value"), str) else None
    return None, None


def load_sharegpt(path: str, tokenizer, num_prompts: int, session_len: int,
                  output_len: int | None = None) -> tuple[list[SampleRequest], DatasetReport]:
    """The first `num_prompts` usable requests of a ShareGPT file.

    output_len: fixed output length for every request (vLLM's --sharegpt-output-len); without it the
    reply's token count is used, and conversations without a reply are dropped.
    """
    if num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {num_prompts}")
    if output_len is not None and output_len < 1:
        raise ValueError(f"--sharegpt-output-len must be >= 1, got {output_len}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a ShareGPT file is a JSON list of conversations, got {type(data).__name__}")
    requests: list[SampleRequest] = []
    report = DatasetReport()
    for item in data:
        if len(requests) == num_prompts:
            break
        report.read += 1
        prompt, reply = _first_exchange(item.get("conversations") or [] if isinstance(item, dict) else [])
        if prompt is None:
            report.no_human_turn += 1
            continue
        if reply is None and output_len is None:
            report.no_reply += 1
            continue
        ids = tokenizer.encode(prompt)
        n_out = output_len if output_len is not None else len(tokenizer.encode(reply, add_special_tokens=False))
        if len(ids) < MIN_TOKENS or n_out < MIN_TOKENS:
            report.too_short += 1
            continue
        if len(ids) + n_out > session_len:
            report.too_long += 1
            continue
        requests.append(SampleRequest(prompt, ids, n_out))
    report.kept = len(requests)
    if not requests:
        hint = "; pass --sharegpt-output-len N to give them an output length" if report.no_reply else ""
        raise ValueError(f"{path}: no usable request ({report.line()}){hint}")
    return requests, report


def random_requests(tokenizer, num_prompts: int, input_len: int, output_len: int,
                    seed: int = 0) -> list[SampleRequest]:
    """Prompts of exactly `input_len` random ordinary (non-special) token ids, as in LMDeploy's and
    vLLM's random datasets; the text is their decoding, for servers that take text."""
    for flag, value in (("--num-prompts", num_prompts), ("--input-len", input_len), ("--output-len", output_len)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        ids = [rng.choice(vocab) for _ in range(input_len)]
        requests.append(SampleRequest(tokenizer.decode(ids), ids, output_len))
    return requests
