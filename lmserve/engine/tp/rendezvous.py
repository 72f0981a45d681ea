"""Where the ranks of a tensor-parallel engine live and how they find each other.

`tp` ranks over `nnodes` nodes, tp/nnodes per node: node n runs ranks n*k .. n*k+k-1, and a rank's
local index on its node picks its GPU. Rank 0 (node 0) is the engine; every other rank is a worker.
They meet at MASTER_ADDR:MASTER_PORT as torchrun's processes do (a TCP store on rank 0's node).

Two process groups: the default one carries the model's all-reduce/all-gather (NCCL on CUDA, gloo on
CPU) and times out after --tp-timeout, so a rank that stops answering fails the step instead of
hanging it; the control group (always gloo, CPU tensors) carries the step plans, and may wait as long
as the server is idle.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmserve.config import EngineConfig
from lmserve.engine.tp.errors import TPSetupError

logger = logging.getLogger(__name__)

_IDLE_TIMEOUT = datetime.timedelta(days=365)    # how long an idle worker waits for the next step


@dataclass(slots=True, frozen=True)
class Topology:
    world: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    backend: str              # nccl | gloo
    timeout_s: float

    @property
    def per_node(self) -> int:
        return self.world // self.nnodes

    @property
    def local_ranks(self) -> range:
        """Ranks this node runs (node 0 includes rank 0, the engine)."""
        return range(self.node_rank * self.per_node, (self.node_rank + 1) * self.per_node)

    def local_index(self, rank: int) -> int:
        return rank - self.node_rank * self.per_node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def topology(cfg: EngineConfig, device_type: str) -> Topology:
    """Rendezvous of `cfg`: flags first, then torchrun's environment, then a local default."""
    addr = cfg.master_addr or os.environ.get("MASTER_ADDR")
    port = cfg.master_port or (int(os.environ["MASTER_PORT"]) if os.environ.get("MASTER_PORT") else None)
    if cfg.nnodes > 1 and (addr is None or port is None):
        raise ValueError(f"--nnodes {cfg.nnodes} needs the rendezvous address of node 0: pass "
                         f"--master-addr and --master-port (or set MASTER_ADDR and MASTER_PORT)")
    world_env = os.environ.get("WORLD_SIZE")
    if world_env and int(world_env) != cfg.tp:
        raise ValueError(f"WORLD_SIZE={world_env} in the environment disagrees with --tp {cfg.tp}")
    if addr is None:
        addr = "127.0.0.1"
    if port is None:
        port = _free_port() if cfg.node_rank == 0 else None
    return Topology(cfg.tp, cfg.nnodes, cfg.node_rank, addr, port,
                    "nccl" if device_type == "cuda" else "gloo", cfg.tp_timeout)


def join(rank: int, topo: Topology):
    """Join the process groups as `rank`; returns the control group. Raises TPSetupError."""
    if topo.backend == "nccl":
        torch.cuda.set_device(topo.local_index(rank))
    timeout = datetime.timedelta(seconds=topo.timeout_s)
    try:
        dist.init_process_group(topo.backend, init_method=f"tcp://{topo.master_addr}:{topo.master_port}",
                                rank=rank, world_size=topo.world, timeout=timeout)
        control = dist.new_group(backend="gloo", timeout=_IDLE_TIMEOUT)
        dist.barrier(group=control)
    except Exception as e:      # torch raises DistStoreError, RuntimeError, ... by transport
        leave()
        raise TPSetupError(
            f"rank {rank} of {topo.world} could not join the tensor-parallel group at "
            f"{topo.master_addr}:{topo.master_port} within --tp-timeout {topo.timeout_s:g} s "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check that every node runs "
            f"its ranks with the same --tp, --nnodes, --master-addr and --master-port") from e
    logger.info("rank %d of %d joined (%s) at %s:%d", rank, topo.world, topo.backend,
                topo.master_addr, topo.master_port)
    return control


def leave() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:       # a peer already gone: nothing left to tear down cleanly
            logger.debug("destroy_process_group failed", exc_info=True)
