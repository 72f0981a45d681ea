"""Rank 0 tells the workers what to do, over the gloo control group.

Per step two broadcasts: a fixed-size header (the command and the plan's sizes) and the plan's
integers. Start-up sends the worker spec (what to load and how to run) as a pickled object, and
every rank reports how its load went together with the KV blocks its memory allows; the smallest
count wins, so every rank's cache has the same blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmserve.config import EngineConfig
from lmserve.engine.step_plan import HEADER_LEN, StepPlan
from lmserve.engine.tp.errors import TPSetupError
from lmserve.model.config import ModelConfig

_STEP, _STOP = 1, 2


@dataclass(slots=True)
class WorkerSpec:
    """What every worker needs from rank 0: the same model, config and session length."""
    load_args: dict
    model_cfg: ModelConfig
    cfg: EngineConfig           # device resolved to "cpu" or "cuda"
    session_len: int


class ControlChannel:
    def __init__(self, rank: int, group):
        self.rank, self.group = rank, group

    # ---- start-up ---------------------------------------------------------------------------------
    def share_spec(self, spec: WorkerSpec | None) -> WorkerSpec:
        box = [spec]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree_startup(self, num_blocks: int | None, error: str | None = None) -> int:
        """Every rank reports (its KV block count, or the error that stopped its load); returns the
        smallest count, or raises TPSetupError naming the ranks that failed."""
        reports: list = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(reports, (num_blocks, error), group=self.group)
        failed = [f"rank {r}: {err}" for r, (_, err) in enumerate(reports) if err is not None]
        if failed:
            raise TPSetupError("tensor-parallel start-up failed: " + "; ".join(failed))
        return min(n for n, _ in reports)

    # ---- steps --------------------------------------------------------------------------------------
    def send_step(self, plan: StepPlan) -> None:
        header, payload = plan.pack()
        dist.broadcast(torch.cat([torch.tensor([_STEP]), header]), src=0, group=self.group)
        if payload.numel():
            dist.broadcast(payload, src=0, group=self.group)

    def send_stop(self) -> None:
        dist.broadcast(torch.tensor([_STOP] + [0] * HEADER_LEN), src=0, group=self.group)

    def receive(self) -> StepPlan | None:
        """A worker's wait for the next step; None means stop."""
        msg = torch.empty(1 + HEADER_LEN, dtype=torch.long)
        dist.broadcast(msg, src=0, group=self.group)
        if int(msg[0]) == _STOP:
            return None
        header = msg[1:]
        payload = torch.empty(StepPlan.payload_len(header), dtype=torch.long)
        if payload.numel():
            dist.broadcast(payload, src=0, group=self.group)
        return StepPlan.unpack(header, payload)
