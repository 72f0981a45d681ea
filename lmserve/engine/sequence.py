"""One generation stream: its tokens, its KV blocks and where it stands."""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from lmserve.config import GenerationConfig

_seq_ids = itertools.count()


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


# eq=False: a sequence is one request's state, equal only to itself. The scheduler's list
# membership tests (`seq in self.running`) then compare identities, not every field: with 64
# running sequences the generated field-by-field __eq__ cost ~1.5 ms a step.
@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]                # prompt (incl. a session's history) + generated
    num_prompt_tokens: int              # tokens of this request's prompt (history included)
    gen_config: GenerationConfig
    session_id: int | None = None
    arrival: float = 0.0
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    status: SeqStatus = SeqStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0        # tokens whose K/V are in the cache
    num_cached_prefix_tokens: int = 0   # of those, found in the prefix cache or the session
    num_preemptions: int = 0
    finish_reason: str | None = None
    output_logprobs: list = field(default_factory=list)
    generator: object = None            # torch.Generator when the request has a seed

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    @property
    def in_prefill(self) -> bool:
        """Still has prompt tokens (or recomputed tokens) without K/V."""
        return self.num_computed_tokens < self.num_tokens - 1
