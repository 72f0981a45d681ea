"""Rank 0's side of tensor parallelism: start the workers, build this rank's runner, notice failures,
and stop everything on close.

Order of start-up: check --tp against the model and the machine (before any process starts), spawn
this node's workers, form the group (bounded by --tp-timeout), send the spec, load this rank's shard
while the workers load theirs, agree on the KV block count. torch.distributed allows one default
group per process, so a process runs at most one tensor-parallel engine at a time.
"""
from __future__ import annotations

import atexit
import logging
import time
from dataclasses import replace

import torch
import torch.distributed as dist

from lmserve.config import EngineConfig
from lmserve.engine.model_runner import ModelRunner
from lmserve.engine.tp.channel import ControlChannel, WorkerSpec
from lmserve.engine.tp.errors import TPFailedError, TPSetupError
from lmserve.engine.tp.rendezvous import join, leave, topology
from lmserve.engine.tp.validate import check_tp, threads_per_rank
from lmserve.engine.tp.workers import LocalWorkers
from lmserve.nn.parallel import ParallelContext

logger = logging.getLogger(__name__)

_DEATH_GRACE_S = 3.0      # after a failed collective, time for the watchdog to see which worker died


class TensorParallel:
    def __init__(self, loaded, cfg: EngineConfig, session_len: int, device_type: str):
        check_tp(cfg, loaded.config, device_type)
        if cfg.node_rank != 0:
            raise ValueError(f"--node-rank {cfg.node_rank} runs only workers: start `lmserve serve worker` "
                             f"on that node; the engine (and server) runs on --node-rank 0")
        if not loaded.load_args:
            raise ValueError("--tp > 1 needs a model from lmserve.model.loader.load_model, so that the "
                             "workers can load their own shards of it")
        if dist.is_initialized():
            raise RuntimeError("this process already runs a tensor-parallel engine (torch.distributed "
                               "allows one group per process); close it first")
        self.failure: TPFailedError | None = None
        self.cfg = replace(cfg, device=device_type)
        topo = topology(cfg, device_type)
        self.parallel = ParallelContext(0, topo.world)
        threads = threads_per_rank(cfg) if device_type == "cpu" else 0
        self._saved_threads = torch.get_num_threads()
        self.workers = LocalWorkers(topo, list(topo.local_ranks)[1:], threads,
                                    logging.getLogger("lmserve").getEffectiveLevel(), self._worker_died)
        self._closed = False
        atexit.register(self.close)
        try:
            self.channel = ControlChannel(0, join(0, topo))
        except TPSetupError as e:
            dead = self.workers.exits()
            self.close()
            raise TPSetupError(f"{e}. Workers: {'; '.join(dead)}" if dead else str(e)) from e
        if threads:
            torch.set_num_threads(threads)
        self.channel.share_spec(WorkerSpec(loaded.load_args, loaded.config, self.cfg, session_len))
        logger.info("tensor parallel: %d ranks (%s), %d on this node", topo.world, topo.backend,
                    topo.per_node)

    def build_runner(self, model_cfg, weights, session_len: int) -> ModelRunner:
        """This rank's runner; any rank's load failure fails them all, with that rank's error."""
        try:
            return ModelRunner(model_cfg, weights, self.cfg, session_len, self.parallel, self.channel)
        except TPSetupError:
            self.close()
            raise
        except Exception as e:
            try:
                self.channel.agree_startup(None, f"{type(e).__name__}: {e}")
            except TPSetupError:
                pass
            finally:
                self.close()
            raise

    # ---- failures ---------------------------------------------------------------------------------
    def _worker_died(self, message: str) -> None:
        if self.failure is None and not self._closed:
            self.failure = TPFailedError(message)

    def step_failed(self, error: BaseException) -> TPFailedError:
        """A step raised: the ranks are out of step for good. Name the cause if a worker died."""
        # Only local workers have a watchdog to wait for; with one rank per node (--tp == --nnodes)
        # the grace would delay every failed request by seconds and could name nothing.
        deadline = time.monotonic() + (_DEATH_GRACE_S if self.workers.procs else 0.0)
        while self.workers.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.failure is None:
            cause = self.workers.failure or (
                f"a tensor-parallel step failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                f"a worker on another node may have died, see its log")
            self.failure = TPFailedError(cause)
        return self.failure

    # ---- shutdown -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (politely when the group is sound) and leave the group; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        healthy = self.failure is None and self.workers.failure is None and hasattr(self, "channel")
        if healthy:
            try:
                self.channel.send_stop()
            except Exception:
                logger.warning("could not tell the workers to stop; terminating them", exc_info=True)
                healthy = False
        self.workers.stop(timeout=10.0 if healthy else 1.0)
        leave()
        if self.failure is None:
            self.failure = TPFailedError("the tensor-parallel engine has been closed")
        torch.set_num_threads(self._saved_threads)
